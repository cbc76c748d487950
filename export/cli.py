"""The export stage's command line: ``python -m export COMMAND`` (click).

Commands are thin: they parse options, call the library, and turn its errors into one-line
messages with exit code 2 (:mod:`export.cli_errors`). Nothing partial is written on failure: checkpoints and
model folders are written to temporary names and renamed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import click

from .cli_errors import BadInput, refusing

REGION_NAMES = ("WT", "TC", "ET")



def _parse_sets(pairs: tuple[str, ...]) -> dict:
    """``--set features=16 --set width=0.3`` -> {"features": 16, "width": 0.3}."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise click.BadParameter(f"{p!r} is not KEY=VALUE", param_hint="--set")
        k, v = p.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def _data_options(fn):
    fn = click.option("--val-phantoms", default=2, show_default=True, help="held-out phantom cases for validation (when no --val-data)")(fn)
    fn = click.option("--val-data", type=click.Path(file_okay=False), help="BraTS-layout folder for validation")(fn)
    fn = click.option("--phantoms", default=8, show_default=True, help="phantom training cases (when no --data)")(fn)
    fn = click.option("--data", type=click.Path(file_okay=False), help="BraTS 2020/2021-layout folder (CASE/CASE_t1.nii.gz ...)")(fn)
    fn = click.option("--shape", nargs=3, type=int, default=(240, 240, 155), show_default=True, help="phantom size")(fn)
    fn = click.option("--keep-slices", default=64, show_default=True, help="axial slices kept around the tumour per phantom")(fn)
    return fn


def _load_data(data, phantoms, val_data, val_phantoms, shape, keep_slices):
    from .data import phantom_cases, read_cases

    train_cases = read_cases(data) if data else phantom_cases(range(phantoms), shape, keep_slices, skull=None)
    val_cases = read_cases(val_data) if val_data else phantom_cases(range(1000, 1000 + val_phantoms), shape, keep_slices, skull=None)
    return train_cases, val_cases


def _validate(model, val_cases):
    from .train import predict_logits, sigmoid, sweep_thresholds, torch_runner

    probs = [sigmoid(predict_logits(torch_runner(model), c.image, model.info.dims, model.info.divisible_by)) for c in val_cases]
    return sweep_thresholds(probs, val_cases)


def _echo_sweep(sweep: dict) -> None:
    d = sweep["global_dice"]
    click.echo(f"validation: threshold {sweep['global']} -> Dice " + " ".join(f"{r} {d[r]:.4f}" for r in REGION_NAMES)
               + f"; per-region thresholds {sweep['per_region']}")


@click.group()
@click.option("--threads", default=2, show_default=True, help="torch threads")
@click.pass_context
def cli(ctx, threads):
    """Export stage of edge-infer: train, prune, export and verify segmentation models.

    \b
    Example:
        python -m export make-sample
        python -m export make-default
    """
    ctx.obj = {"threads": threads}
    from .train import set_threads

    set_threads(threads)


@cli.command()
@click.option("--model", "arch", default="flat_unet2d", show_default=True, help="architecture (registry name)")
@click.option("--set", "sets", multiple=True, help="model argument KEY=VALUE, e.g. --set features=16")
@_data_options
@click.option("--steps", default=600, show_default=True)
@click.option("--batch", default=8, show_default=True)
@click.option("--lr", default=2e-3, show_default=True)
@click.option("--lr-step", default=200, show_default=True, help="steps between learning-rate decays")
@click.option("--tile", multiple=True, type=int, help="training crop, e.g. --tile 128 --tile 128 (default: the model's)")
@click.option("--seed", default=0, show_default=True)
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="run folder (checkpoint.pt, train.json)")
@click.option("--resume", is_flag=True, help="continue from OUT/checkpoint.pt")
@click.pass_context
@refusing
def train(ctx, arch, sets, data, phantoms, val_data, val_phantoms, shape, keep_slices, steps, batch, lr, lr_step,
          tile, seed, out, resume):
    """Train a model (BCE + Dice, Adam, step LR) and sweep the threshold on validation cases.

    \b
    Example:
        python -m export train --model flat_unet2d --set features=16 --steps 600 --out runs/flat16
        python -m export train --data /data/BraTS2021 --val-data /data/BraTS2021_val --out runs/real
    """
    from .train import TrainConfig, save_checkpoint, train as run_train
    from .zoo import create_model

    model = create_model(arch, **_parse_sets(sets))          # bad name / argument: fails before any I/O
    train_cases, val_cases = _load_data(data, phantoms, val_data, val_phantoms, shape, keep_slices)
    cfg = TrainConfig(arch=arch, model_kwargs=_parse_sets(sets), steps=steps, batch=batch, lr=lr, lr_step=lr_step,
                      tile=tuple(tile) if tile else tuple(model.info.default_tile), seed=seed, threads=ctx.obj["threads"])
    out = Path(out)
    ckpt = out / "checkpoint.pt"
    if ckpt.exists() and not resume:
        raise BadInput(f"{ckpt} exists; pass --resume to continue it or choose another --out")
    losses = run_train(model, train_cases, cfg, checkpoint=ckpt, resume=resume)
    sweep = _validate(model, val_cases)
    save_checkpoint(ckpt, model, step=cfg.steps, config=cfg, extra={"threshold_sweep": sweep})
    summary = {"arch": arch, "config": cfg.to_dict(), "losses": losses, "threshold_sweep": sweep,
               "train_cases": [c.case_id for c in train_cases], "val_cases": [c.case_id for c in val_cases]}
    _atomic_json(out / "train.json", summary)
    _echo_sweep(sweep)
    click.echo(f"wrote {ckpt}")


def _atomic_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


@cli.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--method", type=click.Choice(["global", "l1", "pair", "random"]), required=True)
@click.option("--amount", default=0.8, show_default=True, help="fraction of parameters to remove")
@click.option("--finetune-steps", default=100, show_default=True)
@_data_options
@click.pass_context
@refusing
def prune(ctx, checkpoint, out, method, amount, finetune_steps, data, phantoms, val_data, val_phantoms, shape, keep_slices):
    """Prune a trained checkpoint, fine-tune it briefly, and write a new checkpoint.

    \b
    Example:
        python -m export prune runs/flat16/checkpoint.pt runs/flat16_l1.pt --method l1 --amount 0.8
    """
    from .macs import count_macs, count_parameters
    from .prune import apply_masks, prune as run_prune, sparsity_report
    from .train import TrainConfig, model_from_checkpoint, save_checkpoint, train as run_train

    model, state = model_from_checkpoint(checkpoint)
    train_cases, val_cases = _load_data(data, phantoms, val_data, val_phantoms, shape, keep_slices)
    sample = (model.info.config["in_channels"], *model.info.default_tile)
    before = (count_parameters(model), count_macs(model, sample))
    pruned, masks = run_prune(model, method, amount)
    cfg = TrainConfig(**{**(state.get("train_config") or {}), "steps": finetune_steps, "lr_step": max(1, finetune_steps),
                         "lr": 5e-4, "tile": tuple((state.get("train_config") or {}).get("tile") or model.info.default_tile)})
    hook = (lambda step, loss: apply_masks(masks)) if masks else None
    if finetune_steps > 0:
        run_train(pruned, train_cases, cfg, on_step=hook)
    sweep = _validate(pruned, val_cases)
    report = {"method": method, "amount": amount, "parameters_before": before[0], "macs_before": before[1],
              "parameters_after": count_parameters(pruned), "macs_after": count_macs(pruned, sample)}
    if masks:
        report.update(sparsity_report(pruned))
    save_checkpoint(out, pruned, step=0, config=cfg, extra={"threshold_sweep": sweep, "pruning": report})
    click.echo(json.dumps(report))
    _echo_sweep(sweep)
    click.echo(f"wrote {out}")


@cli.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--name", default=None, help="model name in the manifest (default: the OUT folder name)")
@click.option("--backend", "backends", multiple=True, type=click.Choice(["onnx", "tflite"]), default=("onnx", "tflite"), show_default=True)
@click.option("--precision", "precisions", multiple=True, type=click.Choice(["fp32", "fp16", "int8"]), default=("fp32",), show_default=True)
@click.option("--tile", multiple=True, type=int, help="export / manifest tile (default: the model's; 2D ONNX-only exports are dynamic)")
@click.option("--threshold", type=float, default=None, help="default: the checkpoint's swept global threshold, else 0.5")
@click.option("--verify-phantoms", default=2, show_default=True, help="held-out phantoms for the parity check (0: skip)")
@click.option("--overwrite", is_flag=True)
@click.pass_context
@refusing
def export_cmd(ctx, checkpoint, out, name, backends, precisions, tile, threshold, verify_phantoms, overwrite):
    """Export a checkpoint to ONNX / TFLite with a manifest, verified against PyTorch.

    \b
    Example:
        python -m export export runs/flat16/checkpoint.pt models/flat16 --precision fp32 --precision fp16
    """
    from .model_folder import ExportSpec, export_folder
    from .recipes import calibration_batches
    from .train import model_from_checkpoint
    from .verify import format_report, verify_folder

    model, state = model_from_checkpoint(checkpoint)
    sweep = (state.get("extra") or {}).get("threshold_sweep")
    thr = threshold if threshold is not None else (sweep["global"] if sweep else 0.5)
    prov = {"training": state.get("train_config"), "validation": {"threshold_sweep": sweep} if sweep else {},
            "pruning": (state.get("extra") or {}).get("pruning"),
            "command": f"python -m export export {checkpoint} {out} "
                       + " ".join(f"--backend {b}" for b in backends) + " " + " ".join(f"--precision {p}" for p in precisions)}
    spec = ExportSpec(name=name or Path(out).name, backends=tuple(dict.fromkeys(backends)),
                      precisions=tuple(dict.fromkeys(("fp32", *precisions))), tile=tuple(tile) or None,
                      threshold=thr, provenance=prov)
    check = None
    if verify_phantoms > 0:
        from .data import phantom_cases

        cases = phantom_cases(range(1000, 1000 + verify_phantoms), keep_slices=24 if model.info.dims == 2 else None,
                              shape=(240, 240, 155) if model.info.dims == 2 else (96, 96, 96), skull=None)
        check = lambda folder, manifest: verify_folder(folder, model, cases, threads=ctx.obj["threads"])  # noqa: E731
    manifest = export_folder(model, out, spec, calibration=calibration_batches, check=check, overwrite=overwrite)
    ver = manifest.provenance.get("verification")
    if ver:
        click.echo(format_report(ver))
    click.echo(f"wrote {out}: " + ", ".join(f"{a.file} ({a.bytes:,} B)" for a in manifest.artifacts))


@cli.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--phantoms", default=2, show_default=True, help="held-out phantom cases")
@click.option("--data", type=click.Path(file_okay=False), help="or a BraTS-layout folder")
@click.pass_context
@refusing
def verify(ctx, model_dir, checkpoint, phantoms, data):
    """Run every artifact of MODEL_DIR through the runtime and compare with CHECKPOINT in PyTorch.

    \b
    Example:
        python -m export verify edge_infer/models/default runs/default.ckpt
    """
    from .data import phantom_cases, read_cases
    from .train import model_from_checkpoint
    from .verify import format_report, verify_folder

    model, _ = model_from_checkpoint(checkpoint)
    cases = read_cases(data) if data else phantom_cases(range(1000, 1000 + phantoms), keep_slices=24 if model.info.dims == 2 else None,
                                                         shape=(240, 240, 155) if model.info.dims == 2 else (96, 96, 96))
    click.echo(format_report(verify_folder(model_dir, model, cases, threads=ctx.obj["threads"])))


@cli.command("make-sample")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="default: edge_infer/data/sample")
@click.option("--seed", default=2024, show_default=True)
@click.option("--slices", default=40, show_default=True)
@refusing
def make_sample(out, seed, slices):
    """Write the bundled sample scan (a held-out, skull-stripped phantom, int16 NIfTI).

    \b
    Example:
        python -m export make-sample
    """
    from .recipes import SAMPLE_DIR, make_sample as run

    path = run(out or SAMPLE_DIR, seed=seed, slices=slices)
    click.echo(f"wrote {path}")


def _recipe_options(folder: str, steps: int):
    """--out (default: edge_infer/models/FOLDER), --steps and --checkpoint of a bundled-model recipe."""
    def wrap(fn):
        fn = click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                          help="keep / resume the training checkpoint here")(fn)
        fn = click.option("--steps", default=steps, show_default=True)(fn)
        return click.option("--out", type=click.Path(file_okay=False), default=None,
                            help=f"default: edge_infer/models/{folder}")(fn)
    return wrap


@cli.command("make-default")
@_recipe_options("default", 150)
@click.pass_context
@refusing
def make_default(ctx, out, steps, checkpoint):
    """Train, export, verify and document the bundled default model (Flat U-Net 16 x depth 4).

    \b
    Example:
        python -m export make-default
    """
    from .recipes import DEFAULT_MODEL_DIR, make_default as run

    click.echo(f"wrote {run(out or DEFAULT_MODEL_DIR, steps=steps, threads=ctx.obj['threads'], checkpoint=checkpoint)}")


@cli.command("make-default-3d")
@_recipe_options("default-3d", 300)
@click.pass_context
@refusing
def make_default_3d(ctx, out, steps, checkpoint):
    """Train, export, verify and document the bundled 3D model (Flat U-Net 8 x depth 3, tile 96x96x48).

    \b
    Example:
        python -m export --threads 1 make-default-3d
    """
    from .recipes import DEFAULT_3D_MODEL_DIR, make_default_3d as run

    click.echo(f"wrote {run(out or DEFAULT_3D_MODEL_DIR, steps=steps, threads=ctx.obj['threads'], checkpoint=checkpoint)}")


@cli.command()
@click.option("--out", type=click.Path(dir_okay=False), default="export/RESULTS.md", show_default=True)
@click.option("--preset", type=click.Choice(["full", "medium", "quick"]), default="full", show_default=True,
              help="full: 300 training steps per model (hours on 2 cores); medium: ~30 min; quick: a smoke run")
@click.pass_context
@refusing
def table(ctx, out, preset):
    """Train / compress / export the comparison set and write the results table (markdown).

    \b
    Example:
        python -m export table --out export/RESULTS.md
    """
    from .results import write_results

    path = write_results(out, preset=preset, threads=ctx.obj["threads"])
    click.echo(f"wrote {path}")


def _add_import_commands() -> None:
    from .cli_import import COMMANDS

    for command in COMMANDS:
        cli.add_command(command)


_add_import_commands()


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
