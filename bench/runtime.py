"""``runtime`` (issue 2): where the wall time of ``edge-infer run`` goes, and its peak RSS.

Each run is a real ``edge-infer run`` in a fresh process (``python -m edge_infer.cli run
CASE --json``), onnxruntime and LiteRT alternating. From its report: the share of wall time
outside the backend's own run calls (``1 - backend_seconds / sum(timings_s)``, goal at most
15%), per-stage times, and peak RSS against the budget 3 x the float32 input + model + 150 MB.
With ``profile=True`` (or when the goal is missed in a full run) one more run under cProfile
says which functions outside the backend take the time.
"""

from __future__ import annotations

import pstats
import tempfile
from pathlib import Path

from . import data, fixtures, plots
from .common import Context, Result, alternate, median, run_python, table

BACKENDS = ("onnx", "tflite")
#: (slices per call, calls in flight) compared in the sweep; the defaults are the planner's
SWEEP = ((1, 1), (2, 1), (8, 1), (1, 2), (2, 2))
STAGES = ("load_model", "read", "prepare", "infer", "finish", "write")
GOAL_OVERHEAD = 0.15
MB = 1024 * 1024


def cli_args(case: Path, model: Path, backend: str, threads: int, out: Path, batch: int | None = None,
             workers: int | None = None) -> list[str]:
    return ["-m", "edge_infer.cli", "run", str(case), "-o", str(out), "--model", str(model),
            "--backend", backend, "--threads", str(threads), "--json", "-q",
            *(["--batch", str(batch)] if batch else []), *(["--workers", str(workers)] if workers else [])]


def batch_sweep(ctx: Context, case: Path, model: Path, out: Path) -> list[dict]:
    """Backend time, total and peak RSS at each (batch, workers) of :data:`SWEEP`, runs
    alternating, per backend, the same threads in all: the measurement behind the planner's
    default slice batch and workers on a CPU."""
    names = [f"{b}/{n}/{w}" for b in BACKENDS for n, w in SWEEP]

    def once(name: str, rep: int) -> dict:
        b, n, w = name.split("/")
        return run_python(cli_args(case, model, b, ctx.threads, out / f"sweep-{b}-{n}-{w}", int(n), int(w)))

    runs = alternate(names, min(ctx.reps, 2), once)
    rows = []
    for name in names:
        ok = [r for r in runs[name] if "error" not in r]
        if ok:
            b, n, w = name.split("/")
            rows.append({"backend": b, "batch": int(n), "workers": int(w),
                         "backend_s": median([r["backend_seconds"] for r in ok]),
                         "total_s": median([sum(r["timings_s"].values()) for r in ok]),
                         "peak_rss_mb": median([r["peak_rss_mb"] for r in ok]), "runs": len(ok)})
    return rows


def summarise(reports: list[dict]) -> dict:
    """Medians over runs of total, backend time, overhead share, stages and peak RSS."""
    ok = [r for r in reports if "error" not in r]
    totals = [sum(r["timings_s"].values()) for r in ok]
    shares = [1 - r["backend_seconds"] / t for r, t in zip(ok, totals)]
    return {"runs": len(ok), "total_s": median(totals), "backend_s": median([r["backend_seconds"] for r in ok]),
            "overhead_share": median(shares), "overhead_shares": [round(s, 4) for s in shares],
            "stages_s": {k: median([r["timings_s"].get(k, 0.0) for r in ok]) for k in STAGES},
            "peak_rss_mb": median([r["peak_rss_mb"] for r in ok]),
            "process_wall_s": median([r["process_wall_s"] for r in ok]),
            "errors": [r["error"] for r in reports if "error" in r]}


def cprofile_top(case: Path, model: Path, backend: str, threads: int, top: int = 15) -> list[dict]:
    """One run under cProfile: the functions with the most own time (``tottime``)."""
    with tempfile.TemporaryDirectory() as tmp:
        prof = Path(tmp) / "run.prof"
        run_python(["-m", "cProfile", "-o", str(prof), *cli_args(case, model, backend, threads, Path(tmp) / "out")])
        st = pstats.Stats(str(prof))
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]
    return [{"function": f"{Path(f).name}:{line}({fn})", "calls": nc, "tottime_s": round(tt, 4), "cumtime_s": round(ct, 4)}
            for (f, line, fn), (_, nc, tt, ct, _) in rows]


def run(ctx: Context, profile: bool = False) -> Result:
    shape = fixtures.shape2d(ctx)
    case, model = fixtures.case2d(ctx), fixtures.model2d(ctx)
    res = Result("runtime", f"Runtime overhead and memory: `edge-infer run` on {'x'.join(map(str, shape))}, 4 modalities",
                 "python -m bench runtime" + (" --quick" if ctx.quick else ""))
    out = ctx.work("runtime")
    reports: dict[str, list[dict]] = {b: [] for b in BACKENDS}
    for r in range(ctx.reps):
        for b in (BACKENDS if r % 2 == 0 else BACKENDS[::-1]):
            reports[b].append(run_python(cli_args(case, model, b, ctx.threads, out / b)))
    in_mb = data.input_bytes(shape) / MB
    rows = []
    for b in BACKENDS:
        s = summarise(reports[b])
        if not s["runs"]:
            res.notes.append(f"{b}: every run failed: {s['errors'][0]}")
            continue
        model_mb = (model / ("model.onnx" if b == "onnx" else "model.tflite")).stat().st_size / MB
        budget = 3 * in_mb + model_mb + 150
        rows.append({"backend": b, **s, "input_mb": round(in_mb, 1), "model_mb": round(model_mb, 3),
                     "rss_budget_mb": round(budget, 1)})
        res.goal(f"{b}: share of wall time outside backend calls", s["overhead_share"], f"<= {GOAL_OVERHEAD:.0%}",
                 s["overhead_share"] <= GOAL_OVERHEAD)
        res.goal(f"{b}: peak RSS MB", s["peak_rss_mb"], f"<= {budget:.0f} (3 x {in_mb:.0f} + model + 150)",
                 s["peak_rss_mb"] <= budget)
    res.rows = rows
    res.tables.append(table(["backend", "total s", "backend s", "outside backend", *[f"{k} s" for k in STAGES],
                             "peak RSS MB", "RSS budget MB", "process wall s"],
                            [[r["backend"], r["total_s"], r["backend_s"], f"{r['overhead_share']:.1%}",
                              *[r["stages_s"][k] for k in STAGES], r["peak_rss_mb"], r["rss_budget_mb"],
                              r["process_wall_s"]] for r in rows]))
    sweep = batch_sweep(ctx, case, model, out)
    res.params["batch_sweep"] = sweep
    default = {b: (r["plan"]["batch"], r["plan"].get("workers", 1)) for b in BACKENDS for r in reports[b][-1:]
               if "plan" in r}
    res.tables.append(f"Slices per call (`--batch`) and calls in flight (`--workers`), {ctx.threads} threads in all "
                      "(the defaults here: " + ", ".join(f"{b} batch {n}, {w} workers" for b, (n, w) in default.items())
                      + "):\n\n" + table(
                          ["backend", "batch", "workers", "time in backend calls s", "total s", "peak RSS MB"],
                          [[r["backend"], r["batch"], r["workers"], r["backend_s"], r["total_s"], r["peak_rss_mb"]]
                           for r in sweep]))
    missed = any(g["met"] is False for g in res.goals if "outside" in g["goal"])
    if profile or (missed and not ctx.quick):
        for b in BACKENDS:
            top = cprofile_top(case, model, b, ctx.threads)
            res.params.setdefault("cprofile_top", {})[b] = top
            res.tables.append(f"cProfile, {b} (one extra run; own time per function, top 8):\n\n" + table(
                ["function", "calls", "own s", "cumulative s"],
                [[t["function"], t["calls"], t["tottime_s"], t["cumtime_s"]] for t in top[:8]]))
    res.params.update({"shape": shape, "model": str(model.name), "threads": ctx.threads, "reps": ctx.reps})
    res.notes.append(fixtures.model_note(ctx))
    res.notes.append(f"medians of {ctx.reps} fresh-process runs per backend, backends alternating; "
                     "total = sum of the report's timings_s (load_model, read, prepare, infer, finish, write)")
    res.plots.append(plots.stacked_stages(ctx.results / "runtime.png", rows, STAGES, "edge-infer run: seconds per stage"))
    return res
