"""Timing a loaded backend's invokes: first inference, warmup, latency percentiles, and the
operator table of onnxruntime's profiler (what ``onnxruntime_perf_test`` and TFLite's
``benchmark_model`` print). Used by ``edge-infer profile`` for model folders and bare files."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def latency_stats(ms: Sequence[float]) -> dict[str, float]:
    """min/mean/std/max and P50/P90/P95/P99 of latencies in milliseconds."""
    a = np.asarray(ms, dtype=np.float64)
    out = {"min": float(a.min()), "mean": float(a.mean()), "std": float(a.std()), "max": float(a.max())}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(a, p))
    return {k: round(v, 4) for k, v in out.items()}


def time_invokes(run, x: np.ndarray, runs: int, warmup: int) -> dict:
    """First inference, warmup mean, and per-invoke latencies (ms) of ``run(x)``."""
    t0 = time.perf_counter()
    run(x)
    first = (time.perf_counter() - t0) * 1e3
    warm = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        run(x)
        warm.append((time.perf_counter() - t0) * 1e3)
    lat = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(x)
        lat.append((time.perf_counter() - t0) * 1e3)
    return {"first_inference_ms": round(first, 4), "warmup_ms_mean": round(float(np.mean(warm)), 4) if warm else None,
            "latency_ms": latency_stats(lat), "samples_ms": [round(v, 4) for v in lat]}


def onnx_top_ops(path: Path, x: np.ndarray, threads: int, runs: int = 5, top: int = 8) -> list[dict]:
    """Operators by total time from onnxruntime's profiler over ``runs`` invokes."""
    from .backends.onnx import OnnxBackend

    with tempfile.TemporaryDirectory() as tmp:
        be = OnnxBackend(path, threads=threads, profile_prefix=os.path.join(tmp, "ort"))
        for _ in range(runs):
            be.run(x)
        trace = json.loads(Path(be.end_profiling()).read_text())
    per_op: dict[str, float] = {}
    for ev in trace:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + float(ev.get("dur", 0))
    total = sum(per_op.values()) or 1.0
    rows = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    return [{"op": k, "ms_per_run": round(v / 1e3 / runs, 4), "share": round(v / total, 4)} for k, v in rows]


def invoke_stats(backend, path: Path, x: np.ndarray, runs: int, warmup: int, threads: int) -> dict:
    """Per-invoke timings of a loaded backend on ``x`` and its operator table (onnxruntime's
    profiler; LiteRT's Python API has none)."""
    row = time_invokes(backend.run, x, runs, warmup)
    row["units_per_s"] = round(1000.0 / row["latency_ms"]["mean"], 3)
    if backend.name == "onnx":
        row["top_ops"] = onnx_top_ops(path, x, threads)
    else:
        row["top_ops"] = []
        row["top_ops_note"] = "per-operator timing is not exposed by the LiteRT Python API"
    return row


def machine_info() -> dict:
    return {"arch": platform.machine(), "system": platform.system(), "cpus": os.cpu_count(),
            "python": platform.python_version()}
