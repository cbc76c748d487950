"""``profile-overhead`` (issue 4): ``edge-infer profile``'s mean per-invoke latency against the
same backend timed bare (a plain loop of ``session.run`` / ``set_tensor, invoke, get_tensor``).

Rounds alternate which of the two runs first; each round gives the ratio profile / bare
(same model file, same input shape, same threads, same number of runs after the same warmup).
Goal: the median ratio within 5% of 1. An A/A control (a second bare loop in the same round,
bare / bare) measures how far two identical measurements drift apart on this machine: the
noise floor against which the 5% is judged.
"""

from __future__ import annotations

import time

import numpy as np

from . import fixtures, plots
from .common import Context, Result, median, table

GOAL = 0.05


def bare_onnx(path, x: np.ndarray, threads: int, runs: int, warmup: int) -> float:
    """Mean ms of ``session.run`` on an InferenceSession made as the runtime makes it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(warmup + 1):
        sess.run(None, feed)
    lat = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feed)
        lat.append(time.perf_counter() - t0)
    return 1e3 * float(np.mean(lat))


def bare_tflite(path, x: np.ndarray, threads: int, runs: int, warmup: int) -> float:
    """Mean ms of ``set_tensor; invoke; get_tensor`` on a LiteRT Interpreter."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=threads)
    inp, outp = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(inp["index"], list(x.shape), strict=False)
    it.allocate_tensors()

    def once():
        it.set_tensor(inp["index"], x)
        it.invoke()
        return it.get_tensor(outp["index"])

    for _ in range(warmup + 1):
        once()
    lat = []
    for _ in range(runs):
        t0 = time.perf_counter()
        once()
        lat.append(time.perf_counter() - t0)
    return 1e3 * float(np.mean(lat))


def profiled(folder, backend: str, shape, threads: int, runs: int, warmup: int) -> float:
    from edge_infer.profiling import ProfileRequest, profile

    r = profile(str(folder), ProfileRequest(shape=shape, runs=runs, warmup=warmup, compare=(backend,), threads=threads,
                                            volume=False))
    return float(r["variants"][0]["latency_ms"]["mean"])


def run(ctx: Context) -> Result:
    shape = fixtures.shape2d(ctx)
    folder = fixtures.model2d(ctx)
    runs, warmup, rounds = (5, 1, 2) if ctx.quick else (10, 2, 9)
    res = Result("profile-overhead", "Profiling overhead: `edge-infer profile` latency against a bare loop",
                 "python -m bench profile-overhead" + (" --quick" if ctx.quick else ""))
    x = np.random.default_rng(0).normal(size=(1, 4, *shape[:2])).astype(np.float32)
    bare = {"onnx": lambda: bare_onnx(folder / "model.onnx", x, ctx.threads, runs, warmup),
            "tflite": lambda: bare_tflite(folder / "model.tflite", x, ctx.threads, runs, warmup)}
    scan_shape = (*shape[:2], 16)
    for backend in ("onnx", "tflite"):
        prof_ms, bare_ms, ratios, controls = [], [], [], []
        for r in range(rounds):
            if r % 2 == 0:
                p, b, b2 = profiled(folder, backend, scan_shape, ctx.threads, runs, warmup), bare[backend](), bare[backend]()
            else:
                b2, b, p = bare[backend](), bare[backend](), profiled(folder, backend, scan_shape, ctx.threads, runs, warmup)
            prof_ms.append(p)
            bare_ms.append(b)
            ratios.append(p / b)
            controls.append(b2 / b)
        ratio = median(ratios)
        spread = [abs(c - 1) for c in controls]
        res.rows.append({"backend": backend, "profile_ms": median(prof_ms), "bare_ms": median(bare_ms),
                         "ratio": ratio, "ratios": [round(v, 4) for v in ratios],
                         "control_ratio": median(controls), "control_ratios": [round(v, 4) for v in controls],
                         "noise_floor": median(spread), "profile_ms_rounds": prof_ms, "bare_ms_rounds": bare_ms})
        res.goal(f"{backend}: profile / bare latency", ratio, f"within {GOAL:.0%} of 1", abs(ratio - 1) <= GOAL)
    res.tables.append(table(["backend", "profile mean ms", "bare mean ms", "profile / bare (median)",
                             "A/A control bare / bare (median)", "A/A median deviation", "per-round profile / bare"],
                            [[r["backend"], r["profile_ms"], r["bare_ms"], r["ratio"], r["control_ratio"],
                              f"{r['noise_floor']:.1%}", ", ".join(f"{v:.2f}" for v in r["ratios"])] for r in res.rows]))
    res.params = {"unit": [1, 4, *shape[:2]], "runs": runs, "warmup": warmup, "rounds": rounds, "threads": ctx.threads}
    res.notes.append(f"{rounds} rounds per backend, alternating which runs first; each round {warmup} warmup + "
                     f"{runs} timed invokes of a 1x4x{shape[0]}x{shape[1]} slice on each side, plus a second bare loop "
                     "(the A/A control)")
    res.notes.append("what profile adds per invoke is a Python call and two perf_counter reads (microseconds "
                     "against milliseconds); a deviation beyond the A/A control's is what the goal is about")
    res.plots.append(plots.bars(ctx.results / "profile-overhead.png", [r["backend"] for r in res.rows],
                                [r["ratio"] for r in res.rows], "profile / bare (1 = no overhead)",
                                "edge-infer profile vs bare loop"))
    return res
