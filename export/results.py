"""The results table: architectures x compression x precision, measured, written as markdown.

Every figure comes from running something here: parameters and MACs counted on the model
(MACs per 240x240 slice), file sizes of the exported artifacts, Dice of each artifact run
through the edge-infer runtime on held-out phantoms, and host latency per slice (median of
``repeats`` runs, batch 1, ``threads`` threads) for ONNX and TFLite.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import REGIONS

SLICE = (4, 240, 240)


@dataclass
class Settings:
    steps: int = 300
    finetune_steps: int = 100
    train_seeds: Sequence[int] = tuple(range(12))
    val_seeds: Sequence[int] = (1000, 1001)
    keep_slices: int = 32
    prune_amount: float = 0.8
    repeats: int = 10
    archs: dict = field(default_factory=lambda: {
        "flat_unet2d": dict(features=16, depth=4),
        "unet2d": dict(features=16, depth=4),
        "mobilenetv3_lraspp": dict(),
    })
    prune_methods: Sequence[str] = ("global", "l1", "pair", "random")
    precisions: Sequence[str] = ("fp32", "fp16", "int8")

    @classmethod
    def medium(cls) -> "Settings":
        """What fits in about half an hour on a shared 2-core machine."""
        return cls(steps=60, finetune_steps=20, train_seeds=tuple(range(6)), val_seeds=(1000,), keep_slices=24,
                   repeats=5, archs={"flat_unet2d": dict(features=16, depth=4), "unet2d": dict(features=16, depth=4)})

    @classmethod
    def quick(cls) -> "Settings":
        return cls(steps=20, finetune_steps=5, train_seeds=(0, 1), val_seeds=(1000,), keep_slices=16, repeats=2,
                   archs={"flat_unet2d": dict(features=8, depth=4), "unet2d": dict(features=8, depth=4)},
                   prune_methods=("global", "l1"), precisions=("fp32", "fp16"))


def _latency(run, repeats: int) -> float:
    x = np.random.default_rng(0).standard_normal((1, *SLICE)).astype(np.float32)
    run(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1000


def measure_variant(model, label: str, compression: str, settings: Settings, val, calib, workdir: Path,
                    threads: int) -> list[dict]:
    """Export one trained variant at every precision and measure each artifact."""
    from edge_infer.model import load_model

    from .macs import count_macs, count_parameters
    from .model_folder import ExportSpec, export_folder
    from .train import evaluate, predict_logits, sigmoid, sweep_thresholds, torch_runner

    probs = [sigmoid(predict_logits(torch_runner(model), c.image, 2, model.info.divisible_by)) for c in val]
    thr = sweep_thresholds(probs, val)["global"]
    spec = ExportSpec(name=label, precisions=tuple(settings.precisions), tile=SLICE[1:], threshold=thr)
    folder = workdir / label
    manifest = export_folder(model, folder, spec, calibration=calib, overwrite=True)
    params, nonzero = count_parameters(model), count_parameters(model, nonzero=True)
    rows = []
    for prec in settings.precisions:
        row = {"model": label, "compression": compression, "precision": prec, "parameters": params,
               "nonzero": nonzero, "macs": count_macs(model, SLICE), "threshold": thr}
        for backend in ("onnx", "tflite"):
            art = manifest.artifact(backend, prec)
            row[f"{backend}_bytes"] = art.bytes
            loaded = load_model(folder, backend=backend, precision=prec, threads=threads)
            row[f"{backend}_ms"] = _latency(loaded.backend.run, settings.repeats)
            logits = [predict_logits(loaded.backend.run, c.image, 2, manifest.divisible_by, tile=manifest.tile)
                      for c in val]
            row[f"{backend}_dice"] = evaluate([sigmoid(lg) for lg in logits], val, thr)
        rows.append(row)
    return rows


def run_all(settings: Settings, threads: int = 2, workdir: Path | None = None, progress: bool = False) -> list[dict]:
    """Train each architecture, compress the Flat U-Net four ways, export and measure all."""
    from .data import phantom_cases
    from .prune import apply_masks, prune
    from .recipes import calibration_batches
    from .train import TrainConfig, set_threads, train
    from .zoo import create_model

    set_threads(threads)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="edge-infer-results-"))
    cases = phantom_cases(settings.train_seeds, keep_slices=settings.keep_slices, skull=None)
    val = phantom_cases(settings.val_seeds, keep_slices=settings.keep_slices, skull=None)
    calib = lambda shape: calibration_batches(shape, n=8)  # noqa: E731
    rows: list[dict] = []
    trained = {}
    for arch, kwargs in settings.archs.items():
        model = create_model(arch, **kwargs)
        cfg = TrainConfig(arch=arch, model_kwargs=kwargs, steps=settings.steps, lr_step=max(1, settings.steps // 3),
                          lr_gamma=0.3, threads=threads)
        train(model, cases, cfg, progress=progress)
        trained[arch] = (model, cfg)
        rows += measure_variant(model, arch, "none", settings, val, calib, workdir, threads)
    if "flat_unet2d" in trained:
        base, cfg = trained["flat_unet2d"]
        for method in settings.prune_methods:
            import copy

            model, masks = prune(copy.deepcopy(base), method, settings.prune_amount)
            ft = TrainConfig(**{**cfg.to_dict(), "tile": tuple(cfg.tile), "steps": settings.finetune_steps,
                                "lr": 5e-4, "lr_step": max(1, settings.finetune_steps)})
            if settings.finetune_steps:
                train(model, cases, ft, progress=progress, on_step=(lambda s, l: apply_masks(masks)) if masks else None)
            label = f"flat_unet2d-{method}{int(settings.prune_amount * 100)}"
            rows += measure_variant(model, label, f"{method} {int(settings.prune_amount * 100)}%", settings, val,
                                    calib, workdir, threads)
    return rows


def _d(d: dict) -> str:
    return " / ".join(f"{100 * d[r]:.1f}" for r in REGIONS)


def _mean(d: dict) -> float:
    return float(np.mean([d[r] for r in REGIONS]))


def findings(rows: list[dict]) -> list[str]:
    """Check the project's findings against the measured rows; one line each."""
    by = {(r["model"], r["precision"]): r for r in rows}
    out = []
    flat, unet = by.get(("flat_unet2d", "fp32")), by.get(("unet2d", "fp32"))
    if flat and unet:
        pr, mr = unet["parameters"] / flat["parameters"], 1 - flat["macs"] / unet["macs"]
        dd = 100 * (_mean(flat["onnx_dice"]) - _mean(unet["onnx_dice"]))
        out.append(f"- Flat U-Net vs U-Net (same first-level filters): {pr:.1f}x fewer parameters (finding: > 12x: "
                   f"{'holds' if pr > 12 else 'does not hold'}), {100 * mr:.0f}% fewer MACs (finding: about 35%), "
                   f"mean Dice difference {dd:+.1f} points.")
    if flat:
        for r in rows:
            if r["compression"] != "none" and r["precision"] == "fp32":
                size = 1 - r["nonzero"] / flat["parameters"]
                lost = 100 * (_mean(flat["onnx_dice"]) - _mean(r["onnx_dice"]))
                ok = size >= 0.8 and lost <= 1.0
                out.append(f"- {r['compression']}: {100 * size:.0f}% fewer (nonzero) parameters, MACs "
                           f"{r['macs'] / flat['macs']:.2f}x, Dice lost {lost:.1f} points (finding: >= 80% smaller "
                           f"at <= 1 point lost: {'holds' if ok else 'does not hold'}).")
    for (model, prec), r in sorted(by.items()):
        if prec == "fp16" and (model, "fp32") in by:
            f32 = by[(model, "fp32")]
            ratio = r["onnx_bytes"] / f32["onnx_bytes"]
            lost = 100 * (_mean(f32["onnx_dice"]) - _mean(r["onnx_dice"]))
            ok = ratio <= 0.55 and lost <= 0.5
            out.append(f"- {model} fp16: ONNX file {ratio:.2f}x of fp32, TFLite {r['tflite_bytes'] / f32['tflite_bytes']:.2f}x, "
                       f"Dice lost {lost:.2f} points (finding: half size at <= 0.5 point: {'holds' if ok else 'does not hold'}).")
    return out


def render(rows: list[dict], settings: Settings, command: str, seconds: float) -> str:
    head = ["# Results: architectures x compression x precision", "",
            f"Generated by `{command}` in {seconds / 60:.0f} min on {platform.machine()} "
            f"({platform.processor() or 'cpu'}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} "
            f"at the end: latencies on a shared machine are upper bounds), {settings.repeats} timed runs per latency. Training: "
            f"{settings.steps} steps (pruned: +{settings.finetune_steps} fine-tuning steps) on phantom seeds "
            f"{list(settings.train_seeds)}; Dice (WT / TC / ET, %) of each artifact run through the edge-infer "
            f"runtime on held-out phantoms {list(settings.val_seeds)} ({settings.keep_slices} slices around the "
            "tumour), at the threshold swept on the same phantoms. MACs per 240x240 slice (conv/linear). "
            "Latency: median ms per 240x240 slice, batch 1, host CPU.", "",
            "| model | compression | precision | params (nonzero) | GMACs | ONNX KB | TFLite KB | Dice ONNX | "
            "Dice TFLite | ONNX ms | TFLite ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    body = [f"| {r['model']} | {r['compression']} | {r['precision']} | {r['parameters']:,} ({r['nonzero']:,}) | "
            f"{r['macs'] / 1e9:.2f} | {r['onnx_bytes'] / 1024:.0f} | {r['tflite_bytes'] / 1024:.0f} | "
            f"{_d(r['onnx_dice'])} | {_d(r['tflite_dice']) if 'tflite_dice' in r else 'n/a'} | "
            f"{r['onnx_ms']:.1f} | {r['tflite_ms']:.1f} |" for r in rows]
    notes = ["", "## Do the findings hold here?", "", *findings(rows), "",
             "Global magnitude pruning zeroes weights but the dense ONNX/TFLite graphs keep every weight and "
             "multiply the zeros: its file size, MACs and latency do not change (only the nonzero count does). "
             "Structured methods remove channels, so files, MACs and latency shrink. Phantoms are far easier than "
             "real scans: Dice here says nothing about clinical accuracy.", ""]
    return "\n".join(head + body + notes)


PRESETS = {"full": Settings, "medium": Settings.medium, "quick": Settings.quick}


def write_results(out: str | Path, preset: str = "full", threads: int = 2, progress: bool = True) -> Path:
    settings = PRESETS[preset]()
    t = time.perf_counter()
    rows = run_all(settings, threads=threads, progress=progress)
    cmd = f"python -m export table --preset {preset}"
    out = Path(out)
    out.write_text(render(rows, settings, cmd, time.perf_counter() - t), encoding="utf-8")
    return out
