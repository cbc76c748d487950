"""The ``edge-infer`` command line: thin click commands over the library.

Only here do errors become exit codes: 0 ok, 2 bad input or usage, 3 budget exceeded,
1 internal error. A user error is one line on stderr; ``--debug`` adds the traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from . import __version__
from .cli_batch import batch as _batch
from .cli_group import EXIT_BUDGET, EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, Group  # noqa: F401
from .cli_node import rerun as _rerun, serve as _serve, watch as _watch
from .vocab import BACKENDS, PRECISIONS


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-infer")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def main(debug: bool) -> None:
    """Run brain MRI segmentation models on edge devices.

    \b
    Examples:
      edge-infer demo
      edge-infer run case_t1.nii.gz case_t1ce.nii.gz case_t2.nii.gz case_flair.nii.gz -o out/
      edge-infer run BraTS_case_folder/ --backend tflite --overlay
      edge-infer run dicom_study/ -o out/
    """


MODALITY_OPTIONS = ("t1", "t1ce", "t2", "flair")


def _by_modality(params: dict) -> dict[str, Path] | None:
    given = {m: Path(params[m]) for m in MODALITY_OPTIONS if params.get(m) is not None}
    return given or None


def _series_rules(rules: tuple[str, ...]) -> dict[str, list[str]] | None:
    out: dict[str, list[str]] = {}
    for r in rules:
        if "=" not in r:
            raise click.BadParameter(f"{r!r} is not MODALITY=REGEX (e.g. t1ce='t1.*post')", param_hint="--series-rule")
        mod, regex = r.split("=", 1)
        out.setdefault(mod.strip().lower(), []).append(regex)
    return out or None


def run_options(f):
    """Options shared by ``run`` and ``demo``."""
    opts = [
        click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Output folder (created if missing)."),
        click.option("--model", "model", default=None, help="Bundled model name or model folder [default: default]."),
        click.option("--backend", type=click.Choice(BACKENDS), default=None,
                     help="Inference backend [default: the model's first artifact]."),
        click.option("--precision", type=click.Choice(PRECISIONS), default=None,
                     help="Artifact precision [default: the model's first]."),
        click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
                     help="CPU threads of the run in all (0: the board's, else every core)."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Backend calls in flight at once, each on its own slices with threads/workers "
                     "threads [default: one per thread for 2D models on a CPU, else 1]."),
        click.option("--batch", type=click.IntRange(min=1), default=None,
                     help="Slices or tiles per backend call [default: tiles 1; slices enough for "
                     "about two 240x240 planes on a CPU, a GPU board's max_batch; with --board, "
                     "lowered to fit its memory budget]."),
        click.option("--overlap", type=click.FloatRange(0.0, 0.95), default=None,
                     help="Sliding-window overlap for 3D models [default: 0.5]."),
        click.option("--no-crop", "no_crop", is_flag=True,
                     help="Run the full field of view: ignore the manifest's crop rule (no box, no skipped "
                     "slices or windows), for comparison."),
        click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=None,
                     help="Override the manifest's decision threshold(s)."),
        click.option("--keep-largest", is_flag=True, help="Keep only the largest connected lesion."),
        click.option("--min-blob-mm3", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
                     help="Remove connected blobs smaller than this volume."),
        click.option("--overlay", is_flag=True, help="Also write a PNG overlay montage."),
        click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar or summary."),
        click.option("--progress/--no-progress", default=None,
                     help="Force the progress bar on or off [default: shown when stderr is a terminal]."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def board_options(f):
    """``--board``, ``--ram-mb`` and ``--profiles-dir``, shared by run, demo and profile."""
    opts = [
        click.option("--board", default=None,
                     help="Board profile to plan for and check budgets against (see `edge-infer boards`)."),
        click.option("--ram-mb", type=int, default=None, help="RAM of the board variant, e.g. 2048 for a 2 GB Pi 4."),
        click.option("--profiles-dir", multiple=True, type=click.Path(path_type=Path),
                     help="Extra folder of board TOML files (also $EDGE_INFER_PROFILES)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _board(name, ram_mb, profiles_dir):
    if name is None:
        if ram_mb is not None:
            raise click.UsageError("--ram-mb needs --board")
        return None
    from .boards import get_board

    return get_board(name, profiles_dir, ram_mb)


def _summary(result) -> None:
    r = result.report
    for kind, path in result.outputs.items():
        click.echo(f"{kind + ':':8s} {path}")
    vols = ", ".join(f"{k} {v:.2f} mL" for k, v in r.volumes_ml.items())
    click.echo(f"volumes: {vols}")
    m = r.model
    click.echo(f"model:   {m['name']} {m['version']} ({m['backend']}, {m['precision']}, sha256 {m['sha256'][:12]})")
    click.echo("time:    " + ", ".join(f"{k} {v:.2f}s" for k, v in r.timings_s.items())
               + f"; peak RSS {r.peak_rss_mb:.0f} MB")
    if r.crop is not None:
        c = r.crop
        box, grid = " x ".join(f"{a}:{b}" for a, b in c["box"]), "x".join(map(str, c["padded_shape"]))
        click.echo(f"crop:    box {box} of {grid}, "
                   f"{c['units_skipped']} of {c['units']} units skipped, {c['compute_saved']:.0%} of compute saved")
    for w in r.warnings:
        click.echo(f"warning: {w}", err=True)


def run_options_from(params: dict) -> dict:
    """The library's run options (:mod:`edge_infer.options`) from the click parameters of ``run``/``demo``."""
    from .options import FinishOptions, ModelChoice, OutputSpec, ReadOptions, RunTuning

    fmt = params.get("out_format", "nifti")
    return {
        "output": OutputSpec(out_dir=params["out_dir"], formats=("nifti", "seg") if fmt == "both" else (fmt,),
                             overlay=params["overlay"], name=params.get("name"), strict=params.get("strict", False)),
        "model": ModelChoice(model=params["model"], backend=params["backend"], precision=params["precision"],
                             threads=params["threads"], workers=params["workers"],
                             board=_board(params["board"], params["ram_mb"], params["profiles_dir"])),
        "read": ReadOptions(by_modality=_by_modality(params),
                            series_rules=_series_rules(params.get("series_rule", ()))),
        "finish": FinishOptions(threshold=params["threshold"], keep_largest=params["keep_largest"],
                                min_blob_mm3=params["min_blob_mm3"]),
        "tuning": RunTuning(batch=params["batch"], overlap=params["overlap"],
                            quiet=params["quiet"] or params["as_json"], progress=params["progress"],
                            crop=not params.get("no_crop", False)),
    }


def _run(inputs, params: dict):
    from .run import run_case

    opts = run_options_from(params)
    result = run_case(list(inputs), opts.pop("output"), **opts)
    if params["as_json"]:
        click.echo(json.dumps(result.report.to_dict(), indent=2))
    elif not params["quiet"]:
        _summary(result)
    return result


@main.command()
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("--t1", type=click.Path(path_type=Path), help="T1 NIfTI file.")
@click.option("--t1ce", type=click.Path(path_type=Path), help="T1 post-contrast NIfTI file.")
@click.option("--t2", type=click.Path(path_type=Path), help="T2 NIfTI file.")
@click.option("--flair", type=click.Path(path_type=Path), help="FLAIR NIfTI file.")
@click.option("--series-rule", multiple=True, metavar="MOD=REGEX",
              help="DICOM: map series whose description matches REGEX to MOD (repeatable).")
@click.option("--name", default=None, help="Stem of the output file names [default: from the input].")
@click.option("--strict", is_flag=True, help="With --board: a budget breach is an error (exit 3), nothing written.")
@click.option("--format", "out_format", type=click.Choice(["nifti", "seg", "both"]), default="nifti", show_default=True,
              help="Mask as NIfTI, DICOM SEG (DICOM input only), or both.")
@board_options
@run_options
def run(inputs, **params):
    """Segment a scan: NIfTI file(s), a BraTS case folder, or a DICOM folder.

    Writes OUT/<case>_mask.nii.gz on the input's exact grid and OUT/<case>_report.json.

    \b
    Examples:
      edge-infer run BraTS20_001/ -o out/
      edge-infer run case_4d.nii.gz -o out/ --backend tflite --threads 4
      edge-infer run --t1 a.nii.gz --t1ce b.nii.gz --t2 c.nii.gz --flair d.nii.gz -o out/
      edge-infer run dicom_study/ --series-rule t1ce='t1.*post' -o out/
      edge-infer run BraTS20_001/ --board rpi4 --ram-mb 2048 --strict -o out/
      edge-infer run dicom_study/ -o out/ --format seg
    """
    _run(inputs, {**params, "out_dir": params["out_dir"] or Path(".")})


@main.command()
@board_options
@run_options
def demo(**params):
    """Run the default model on the bundled sample scan and say where the outputs are.

    \b
    Example:
      edge-infer demo -o demo-out/ --overlay
    """
    from .samples import sample_case

    folder = sample_case()
    out = params["out_dir"] or Path("edge-infer-demo")
    result = _run([folder], {**params, "out_dir": out})
    if not params["quiet"] and not params["as_json"]:
        from .samples import sample_dice

        dice = sample_dice(result.segmentation.labels)
        if dice:
            click.echo("dice vs sample ground truth: " + ", ".join(f"{k} {v:.3f}" for k, v in dice.items()))
        click.echo(f"demo outputs are in {out.resolve()}")


@main.command()
@click.argument("model", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def info(model, as_json):
    """Show a model's manifest and check its files' sha256.

    \b
    Example:
      edge-infer info default
    """
    from .manifest import check_artifact, load_manifest
    from .model import resolve_model

    m = load_manifest(resolve_model(model))
    for art in m.artifacts:
        check_artifact(m, art)
    if as_json:
        click.echo(json.dumps(m.to_dict(), indent=2))
        return
    click.echo(f"{m.name} {m.version}{'  (PLACEHOLDER, not trained)' if m.placeholder else ''}")
    click.echo(f"  {m.dims}D, input {m.layout}, modalities {', '.join(m.modalities)}, "
               f"spacing {'x'.join(f'{s:g}' for s in m.spacing_mm)} mm, {m.orientation}, "
               f"tile {m.tile or 'dynamic'} (divisible by {m.divisible_by}), normalisation {m.normalization}")
    thresholds = ", ".join(f"{t:g}" for t in m.threshold)
    click.echo(f"  outputs {', '.join(m.channels)} ({m.activation}), thresholds {thresholds}")
    click.echo("  labels " + ", ".join(f"{lb.value}={lb.name} ({lb.region})" for lb in m.labels))
    click.echo(f"  {m.parameters:,} parameters, {m.macs / 1e9:.3f} GMAC per {'slice' if m.dims == 2 else 'tile'}")
    for a in m.artifacts:
        click.echo(f"  {a.file}: {a.backend} {a.precision}, {a.bytes:,} bytes, sha256 {a.sha256} (verified)")
    if m.intended_use:
        click.echo(f"  intended use: {m.intended_use}")


@main.command()
def models():
    """List the models bundled with this installation.

    \b
    Example:
      edge-infer models
    """
    from .manifest import load_manifest
    from .model import bundled_models

    found = bundled_models()
    if not found:
        click.echo("no bundled models installed")
    for name, folder in found.items():
        m = load_manifest(folder)
        arts = ", ".join(f"{a.backend}/{a.precision}" for a in m.artifacts)
        tag = "  [placeholder: not a trained model]" if m.placeholder else ""
        click.echo(f"{name}: {m.name} {m.version}, {m.dims}D, {arts}{tag}")


@main.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(model, as_json):
    """Check a model folder on its own: manifest, sha256 of every artifact, tensors, a test run.

    \b
    Example:
      edge-infer verify path/to/model_folder
    """
    from .verify import verify_model

    result = verify_model(model)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        for line in result.lines:
            click.echo(line)
    if not result.ok:
        sys.exit(EXIT_INPUT)


@main.command()
@click.option("--profiles-dir", multiple=True, type=click.Path(path_type=Path),
              help="Extra folder of board TOML files (also $EDGE_INFER_PROFILES).")
@click.option("--json", "as_json", is_flag=True, help="Print the profiles as JSON.")
def boards(profiles_dir, as_json):
    """List the board profiles: memory and latency budgets, backends, precisions.

    \b
    Example:
      edge-infer boards
      edge-infer boards --profiles-dir ./my_boards
    """
    from .boards import all_boards

    found = all_boards(profiles_dir)
    if as_json:
        click.echo(json.dumps([b.to_dict() for b in found], indent=2))
        return
    for b in found:
        click.echo(f"{b.name:18s} {b.arch:8s} RAM {b.ram_mb} MB, budget {b.memory_budget_mb:.0f} MB, "
                   f"{b.latency_per_unit_ms:g} ms/unit, {b.latency_per_volume_s:g} s/volume, "
                   f"backends {'>'.join(b.backends)}, precisions {'>'.join(b.precisions)}, {b.threads} threads")
        click.echo(f"{'':18s} {b.description}")


def _shape(value):
    if value is None:
        return None
    try:
        parts = tuple(int(v) for v in value.lower().split("x"))
    except ValueError:
        parts = ()
    if len(parts) != 3 or min(parts) < 2:
        raise click.BadParameter(f"{value!r} is not IxJxK with each at least 2, e.g. 240x240x155", param_hint="--shape")
    return parts


@main.command()
@click.argument("model", required=False)
@click.option("--scan", "scan", multiple=True, type=click.Path(path_type=Path),
              help="Time on this scan (a path as `run` takes; repeat for several files).")
@click.option("--shape", default=None, help="Time on a synthetic volume of IxJxK voxels [default: 240x240x155].")
@click.option("--runs", type=click.IntRange(min=1), default=50, show_default=True, help="Timed invokes per variant.")
@click.option("--warmup", type=click.IntRange(min=0), default=5, show_default=True, help="Untimed invokes first.")
@click.option("--compare", default="",
              help="Variants, comma-separated: backends (onnx,tflite) and/or precisions (fp32,fp16,int8).")
@click.option("--threads", type=click.IntRange(min=0), default=0,
              help="Backend threads [default: the board's, else the backend's].")
@click.option("--no-volume", is_flag=True, help="Skip the whole-volume run (per-invoke latency only).")
@click.option("--json", "as_json", is_flag=True, help="Print the full result as JSON.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a PNG of the latency distributions.")
@board_options
def profile(model, scan, shape, runs, warmup, compare, threads, no_volume, as_json, plot, board, ram_mb, profiles_dir):
    """Measure a model's latency and memory, and say whether it fits a board.

    Exit code 3 when a --board budget is not met (for CI gating).

    \b
    Examples:
      edge-infer profile default --board rpi4
      edge-infer profile my_model/ --compare onnx,tflite --runs 100 --plot latency.png
      edge-infer profile default --scan BraTS20_001/ --board jetson-orin-nano --json
      edge-infer profile model.onnx --runs 100   (a bare file: synthetic input from its tensor shapes)
    """
    from .errors import BudgetError
    from .profiling import ProfileRequest, format_table, plot_latencies, profile as run_profile

    if scan and shape:
        raise click.UsageError("give --scan or --shape, not both")
    b = _board(board, ram_mb, profiles_dir)
    words = [w.strip().lower() for w in compare.split(",") if w.strip()]
    result = run_profile(model, ProfileRequest(board=b, scan=tuple(scan), shape=_shape(shape), runs=runs, warmup=warmup,
                                               compare=tuple(words), threads=threads, volume=not no_volume))
    if plot is not None:
        plot_latencies(result, plot)
    if as_json:
        for r in result["variants"]:
            r.pop("samples_ms", None)
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(format_table(result))
    if b is not None and not result["verdict"]["ok"]:
        raise BudgetError(f"the model does not fit {b.name}'s budgets (see the verdict above)")


# the commands defined in their own modules
main.add_command(_serve)
main.add_command(_watch)
main.add_command(_rerun)
main.add_command(_batch)


if __name__ == "__main__":  # pragma: no cover
    main()
