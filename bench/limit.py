"""``limit`` (issue 8.4): the model's achieved FLOP/s against the machine's matmul FLOP/s.

In one process, rounds alternate a numpy float32 2048x2048 matmul measurement (best of 3) with
a whole-volume ``segment`` per backend. Achieved FLOP/s = MACs per slice x slices x 2 / time
inside the backend's run calls; the fraction is taken within each round, then the median.
"""

from __future__ import annotations

from . import fixtures, models, plots
from .common import Context, Result, matmul_gflops, median, table


def run(ctx: Context) -> Result:
    from edge_infer.model import load_model
    from edge_infer.segmentation import segment
    from edge_infer.readers import read_scan

    shape = fixtures.slab_shape(ctx)
    folder = fixtures.model2d(ctx)
    info = models.describe(folder)
    macs = int(info["macs_per_unit"])
    res = Result("limit", "Against the machine's limit: achieved FLOP/s over numpy matmul FLOP/s",
                 "python -m bench limit" + (" --quick" if ctx.quick else ""))
    scan = read_scan([fixtures.slab2d(ctx)], ("t1", "t1ce", "t2", "flair"))
    lms = {b: load_model(folder, backend=b, threads=ctx.threads) for b in ("onnx", "tflite")}
    n = 512 if ctx.quick else 2048
    rounds = ctx.reps + (0 if ctx.quick else 1)
    peak, got = [], {b: [] for b in lms}
    for r in range(rounds):
        peak.append(matmul_gflops(n))
        for b in (list(lms) if r % 2 == 0 else list(lms)[::-1]):
            seg = segment(scan, lms[b])
            flop = 2.0 * macs * seg.plan.units
            got[b].append((flop / seg.backend_seconds / 1e9, peak[-1], seg.backend_seconds / seg.plan.units))
    for b, vals in got.items():
        res.rows.append({"backend": b, "achieved_gflops": median([v[0] for v in vals]),
                         "fraction_of_matmul": median([v[0] / v[1] for v in vals]),
                         "ms_per_slice": 1e3 * median([v[2] for v in vals]),
                         "matmul_gflops": median(peak), "rounds": len(vals)})
    res.tables.append(table(["backend", "ms per slice (in backend)", "achieved GFLOP/s", f"numpy matmul {n}^2 GFLOP/s",
                             "fraction"],
                            [[r["backend"], r["ms_per_slice"], r["achieved_gflops"], r["matmul_gflops"],
                              f"{r['fraction_of_matmul']:.0%}"] for r in res.rows]))
    res.params = {"shape": shape, "macs_per_slice": macs, "matmul_n": n, "threads": ctx.threads, "rounds": rounds,
                  "matmul_gflops_rounds": peak}
    res.notes.append(fixtures.model_note(ctx) + f"; {macs / 1e9:.3f} GMAC per {shape[0]}x{shape[1]} slice "
                     "(export.macs: convolutions only)")
    res.notes.append("numpy matmul uses all the BLAS threads numpy was built with; the backends use "
                     f"{ctx.threads} threads")
    res.plots.append(plots.bars(ctx.results / "limit.png", [r["backend"] for r in res.rows],
                                [r["fraction_of_matmul"] for r in res.rows], "fraction of numpy matmul FLOP/s",
                                "achieved FLOP/s / machine limit"))
    return res
