"""``edge-infer profile``: latency and memory of a model, per variant, against a board's budget.

Reports what ``onnxruntime_perf_test`` and TFLite's ``benchmark_model`` report (load time,
first inference, warmup, per-invoke latency percentiles, throughput, the top operators by time)
plus the whole-volume latency per stage and the peak RSS of a real run (the library's
``run_case``) in a fresh process. On a machine that is not the board, a roofline estimate for
the board is shown, labelled as an estimate and kept apart from the measurements
(:mod:`edge_infer.profile_verdict`). A bare ``.onnx``/``.tflite`` file is profiled on its own
(:mod:`edge_infer.profile_file`).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .board_backends import not_on_board
from .boards import BoardProfile
from .errors import (
    BackendUnavailableError,
    BudgetError,
    EdgeInferError,
    InputError,
    ModelError,
)
from .invoke_timing import invoke_stats, machine_info
from .manifest import Manifest, load_manifest
from .model import load_model, resolve_model
from .plan import unit_shape
from .profile_verdict import board_estimates, verdict

BACKEND_WORDS = ("onnx", "tflite")
PRECISION_WORDS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Variant:
    backend: str
    precision: str

    @property
    def name(self) -> str:
        return f"{self.backend}/{self.precision}"


def parse_compare(words: Sequence[str], m: Manifest, board=None,
                  installed: Sequence[str] | None = None) -> list[Variant]:
    """Variants to compare from words such as ``onnx,tflite,fp16,int8``.

    Backends and precisions combine: ``onnx,tflite`` compares both backends at the first
    precision each has; ``fp32,fp16`` compares precisions on the default backend; both kinds
    give every combination. Nothing: the board's choice, or the model's first artifact; when
    its runtime is not ``installed``, the first choice that is follows it (the first is then
    listed as skipped, with how to install its runtime).
    """
    bad = [w for w in words if w not in BACKEND_WORDS + PRECISION_WORDS]
    if bad:
        raise InputError(f"--compare: unknown {', '.join(map(repr, bad))}; use backends "
                         f"({', '.join(BACKEND_WORDS)}) and/or precisions ({', '.join(PRECISION_WORDS)})")
    backends = [w for w in words if w in BACKEND_WORDS]
    precisions = [w for w in words if w in PRECISION_WORDS]
    have = [(a.backend, a.precision) for a in m.artifacts]
    if not backends:
        pref = list(board.backends) if board is not None else []
        order = [b for b in dict.fromkeys(pref + [a for a, _ in have]) if any(h[0] == b for h in have)]
        backends = order[:1] or [have[0][0]]
        if installed is not None and backends[0] not in installed:
            backends += [b for b in order if b in installed and (board is None or b in board.backends)][:1]
    out = []
    for b in backends:
        precs = precisions or [next((p for p in (list(board.precisions) if board else []) + ["fp32", "fp16", "int8"]
                                     if (b, p) in have), "fp32")]
        for p in precs:
            out.append(Variant(b, p))
    return list(dict.fromkeys(out))


def synthetic_scan(folder: Path, shape: tuple[int, int, int], modalities: Sequence[str]) -> list[Path]:
    """A 4D NIfTI of ``shape`` at 1 mm (a smooth blob with noise) for timing without a scan."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    r2 = np.zeros(shape, dtype=np.float32)
    for g in grids:
        r2 += g * g
    head = (r2 < 0.8).astype(np.float32)
    data = np.stack([head * (500 + 100 * c) + rng.normal(0, 20, shape).astype(np.float32) * head
                     for c in range(len(modalities))], axis=-1)
    path = folder / "synthetic.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(np.int16), np.diag([1.0, 1.0, 1.0, 1.0])), path)
    return [path]


def run_volume(folder: str, inputs: Sequence[Path], variant: Variant, threads: int, board=None) -> dict:
    """The report of a real run of ``inputs`` (read to write, the library's ``run_case``), or
    ``{"error": ...}`` (with ``"budget": True`` when the board's budget refused it).

    It runs in a child process so that its peak RSS is the run's own, not this profiler's
    (which holds a loaded model and its buffers); started by ``spawn``, not ``fork``, so that
    the child begins empty rather than with a copy of this process's pages.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        job = pool.submit(_volume_report, folder, [str(p) for p in inputs], variant.backend, variant.precision,
                          threads, board)
        try:
            return job.result()
        except BrokenProcessPool:  # killed (out of memory) or crashed in a native runtime
            return {"error": "the volume run's process died (out of memory, or a crash in the runtime)"}


def _volume_report(folder: str, inputs: list[str], backend: str, precision: str, threads: int, board) -> dict:
    from .options import ModelChoice, OutputSpec
    from .run import run_case

    with tempfile.TemporaryDirectory() as out:
        try:
            choice = ModelChoice(folder, backend, precision, threads, board=board)
            return run_case(inputs, OutputSpec(Path(out)), model=choice).report.to_dict()
        except BudgetError as exc:
            return {"error": str(exc), "budget": True}
        except EdgeInferError as exc:
            return {"error": str(exc)}


@dataclass(frozen=True)
class ProfileRequest:
    """What to profile on and how (the options of ``edge-infer profile``).

    ``board``: judge against this :class:`~edge_infer.boards.BoardProfile`; ``scan``: time
    on these inputs (as ``run`` takes them), else on a synthetic volume of ``shape``;
    ``runs``/``warmup``: timed and untimed invokes per variant; ``compare``: words as
    :func:`parse_compare` takes them; ``threads``: backend threads (0: the board's, else the
    backend's); ``volume``: also time a whole-volume run.
    """

    board: BoardProfile | None = None
    scan: tuple = ()
    shape: tuple[int, int, int] | None = None
    runs: int = 50
    warmup: int = 5
    compare: tuple = ()
    threads: int = 0
    volume: bool = True


def profile(model_ref: str | Path | None, request: ProfileRequest = ProfileRequest()) -> dict:
    """Profile every variant; returns the JSON-ready result (see the CLI for the table).

    ``model_ref`` is a model folder, manifest or bundled name, or a bare ``.onnx``/``.tflite``
    file (:mod:`~edge_infer.profile_file`). Variants that cannot run here are listed as
    skipped with the reason; when none can run, :class:`BackendUnavailableError` says why.
    """
    from .backends import installed_backends
    from .profile_file import (
        bare_backend,
        check_bare_options,
        manifest_beside,
        profile_file,
    )

    folder, r = resolve_model(model_ref), request
    board, compare = r.board, tuple(r.compare)
    if bare_backend(folder):
        listed = manifest_beside(folder)
        if listed is None:
            check_bare_options(board, r.scan, r.shape, compare)
            return profile_file(folder, runs=r.runs, warmup=r.warmup, threads=r.threads)
        folder, compare = listed[0], compare or listed[1:]
    m = load_manifest(folder)
    variants = parse_compare(compare, m, board, installed_backends())
    threads = r.threads or (min(board.threads, os.cpu_count() or 1) if board is not None else 0)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = [Path(p) for p in r.scan] or synthetic_scan(Path(tmp), r.shape or (240, 240, 155), m.modalities)
        geometry = _geometry(m, inputs)
        unit = unit_shape(m, geometry.padded_shape)
        x = np.random.default_rng(0).normal(size=unit).astype(np.float32)
        rows = [_profile_variant(str(folder), v, x, r.runs, r.warmup, threads, inputs if r.volume else None, board)
                for v in variants]
    _check_any_ran(rows)
    _ratios(rows)
    result: dict[str, Any] = {
        "model": {"name": m.name, "version": m.version, "macs_per_unit": m.macs, "parameters": m.parameters},
        "machine": machine_info(),
        "input": {"shape": list(geometry.scan_shape), "padded_shape": list(geometry.padded_shape),
                  "unit_shape": list(unit), "source": "scan" if r.scan else "synthetic"},
        "runs": r.runs, "warmup": r.warmup, "threads": threads,
        "variants": rows,
    }
    if board is not None:
        result["board"] = board.to_dict()
        result["estimate"] = board_estimates(m, rows, board, geometry)
        result["verdict"] = verdict(rows, board, result["estimate"], on_board=platform.machine() == board.arch)
    return result


def _check_any_ran(rows: list[dict]) -> None:
    if not any("latency_ms" in r for r in rows):
        raise BackendUnavailableError("nothing could be profiled here: " +
                                      "; ".join(f"{r['variant']}: {r['skipped']}" for r in rows))


def _geometry(m: Manifest, inputs: Sequence[Path]):
    from .plan import geometry_for
    from .readers import read_scan

    return geometry_for(m, read_scan(list(inputs), m.modalities))


def _profile_variant(folder: str, v: Variant, x: np.ndarray, runs: int, warmup: int, threads: int,
                     inputs, board) -> dict:
    row: dict = {"variant": v.name, "backend": v.backend, "precision": v.precision}
    why_not = not_on_board(board, v.backend) if board is not None else None
    if why_not:
        row["skipped"] = why_not
        return row
    try:
        t0 = time.perf_counter()
        lm = load_model(folder, backend=v.backend, precision=v.precision, threads=threads)
        row["load_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
    except (ModelError, InputError) as exc:
        row["skipped"] = str(exc)
        return row
    row["runtime"] = lm.backend.describe()
    row["artifact_bytes"] = lm.artifact.bytes
    row.update(invoke_stats(lm.backend, lm.path, x, runs, warmup, threads))
    from .planning import measure_costs

    row["memory_costs"] = measure_costs(lm, x.shape, 0).__dict__
    del lm
    if inputs is not None:
        rep = run_volume(folder, inputs, v, threads, board)
        if "error" in rep:
            row["volume"] = rep
        else:
            row["volume"] = {"timings_s": rep["timings_s"], "total_s": round(sum(rep["timings_s"].values()), 4),
                             "backend_seconds": rep["backend_seconds"], "peak_rss_mb": rep["peak_rss_mb"],
                             "units": rep["plan"]["units"], "batch": rep["plan"]["batch"], "crop": rep.get("crop"),
                             "estimated_peak_mb": rep["plan"].get("estimated_peak_mb"),
                             "budget": rep.get("budget", {}).get("breaches")}
    return row


def _ratios(rows: list[dict]) -> None:
    ran = [r for r in rows if "latency_ms" in r]
    if not ran:
        return
    base = ran[0]
    for r in ran:
        r["ratio_to_first"] = {"latency_mean": round(r["latency_ms"]["mean"] / base["latency_ms"]["mean"], 4)}
        if "total_s" in r.get("volume", {}) and "total_s" in base.get("volume", {}):
            r["ratio_to_first"]["volume_total"] = round(r["volume"]["total_s"] / base["volume"]["total_s"], 4)


def plot_latencies(result: dict, path: Path) -> None:
    """Box plot of per-invoke latency per variant (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'edge-infer[plot]'") from None
    rows = [r for r in result["variants"] if "samples_ms" in r]
    fig, ax = plt.subplots(figsize=(2 + 1.5 * len(rows), 4))
    ax.boxplot([r["samples_ms"] for r in rows], showfliers=True)
    ax.set_xticks(range(1, len(rows) + 1), [r["variant"] for r in rows])
    ax.set_ylabel("latency per invoke (ms)")
    ax.set_title(f"{result['model']['name']} on {result['machine']['arch']}, unit {result['input']['unit_shape']}")
    fig.tight_layout()
    import io

    from .writers import commit_files

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    commit_files({Path(path): buf.getvalue()})


def format_table(result: dict) -> str:
    """The side-by-side markdown table the CLI prints."""
    inp = result["input"]
    volume = f"volume {'x'.join(map(str, inp['shape']))}" if inp.get("shape") else "no volume stage"
    lines = [(f"model {result['model']['name']} {result['model']['version']} on {result['machine']['arch']} "
             f"({result['machine']['cpus']} cpus), unit {'x'.join(map(str, inp['unit_shape']))}, "
             f"{volume} ({inp['source']}), "
             f"{result['runs']} runs after {result['warmup']} warmup, threads {result['threads'] or 'default'}"),
             "",
             ("| variant | load ms | first ms | mean ms | std | p50 | p90 | p95 | p99 | max | units/s | ratio "
              "| volume s (read/prep/infer/finish/write) | peak RSS MB |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_table_row(r) for r in result["variants"]]
    for r in result["variants"]:
        crop = r.get("volume", {}).get("crop")
        if crop:
            lines.append(f"crop ({r['variant']}): box {' x '.join(f'{a}:{b}' for a, b in crop['box'])} of "
                         f"{'x'.join(map(str, crop['padded_shape']))}, {crop['units_skipped']} of {crop['units']} "
                         f"units skipped, {crop['compute_saved']:.0%} of compute saved")
    for r in result["variants"]:
        if r.get("top_ops"):
            lines.append("")
            lines.append(f"top operators ({r['variant']}, onnxruntime profiler): " +
                         ", ".join(f"{o['op']} {o['share']:.0%}" for o in r["top_ops"]))
    if "estimate" in result:
        lines += _verdict_lines(result["estimate"], result["verdict"])
    return "\n".join(lines)


def _table_row(r: dict) -> str:
    if "skipped" in r:
        return f"| {r['variant']} | skipped: {r['skipped']} |" + " |" * 12
    s = r["latency_ms"]
    vol = r.get("volume", {})
    if "timings_s" in vol:
        t = vol["timings_s"]
        stages = "/".join(f"{t.get(k, 0):.2f}" for k in ("read", "prepare", "infer", "finish", "write"))
        vs = f"{vol['total_s']:.2f} ({stages})"
        rss = f"{vol['peak_rss_mb']:.0f}"
    else:
        vs, rss = vol.get("error", "-"), "-"
    return (f"| {r['variant']} | {r['load_ms']:.1f} | {r['first_inference_ms']:.1f} | {s['mean']:.2f} | "
            f"{s['std']:.2f} | "
            f"{s['p50']:.2f} | {s['p90']:.2f} | {s['p95']:.2f} | {s['p99']:.2f} | {s['max']:.2f} | "
            f"{r['units_per_s']:.1f} | {r['ratio_to_first']['latency_mean']:.2f} | {vs} | {rss} |")


def _verdict_lines(estimate: dict, v: dict) -> list[str]:
    lines = ["", estimate["label"] + ":"]
    for name, e in estimate["per_variant"].items():
        vol = f", about {e['volume_infer_s']:.1f} s of inference per volume" if "volume_infer_s" in e else ""
        lines.append(f"  {name}: about {e['estimate_ms']:.1f} ms per unit ({e['bound']}-bound){vol}")
    judged = " (judged on the variants that ran)" if v.get("skipped") else ""
    lines += ["", f"budget verdict for {v['board']}: {'FITS' if v['ok'] else 'DOES NOT FIT'}{judged}"]
    for name, pv in v["per_variant"].items():
        lines.append(f"  {name}: {'ok' if pv['ok'] else 'over budget'} [{pv['basis']}]"
                     + (": " + "; ".join(pv["reasons"]) if pv["reasons"] else ""))
    for name, why in v.get("skipped", {}).items():
        lines.append(f"  {name}: not judged, skipped: {why}")
    return lines
