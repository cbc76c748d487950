"""``scaling`` (issue 8.5): time and peak RSS for 1x, 2x, 4x the slices and 2x in-plane.

Each size is a real ``edge-infer run`` in a fresh process (onnxruntime, a fully dynamic ONNX
export of the default architecture), sizes alternating over rounds. Fitted growth is the
least-squares slope of log(value) over log(voxels): 1 is linear. Goals: time linear in voxels
(slope within 0.85..1.15), 2D peak RSS growing no faster than the input (slope <= 1).
"""

from __future__ import annotations

from . import data, fixtures, plots
from .common import Context, Result, loglog_slope, median, run_python, table
from .runtime import cli_args

FULL = {"1x slices": (240, 240, 40), "2x slices": (240, 240, 80), "4x slices": (240, 240, 160),
        "2x in-plane": (480, 480, 40)}
QUICK = {"1x slices": (64, 64, 16), "2x slices": (64, 64, 32), "4x slices": (64, 64, 64), "2x in-plane": (128, 128, 16)}
TIME_BAND = (0.85, 1.15)


def run(ctx: Context) -> Result:
    sizes = QUICK if ctx.quick else FULL
    model = fixtures.model2d(ctx, backends=("onnx",))
    cases = {k: data.case(ctx.cache, s) for k, s in sizes.items()}
    res = Result("scaling", "Scaling with volume size (onnxruntime, `edge-infer run` in a fresh process)",
                 "python -m bench scaling" + (" --quick" if ctx.quick else ""))
    out = ctx.work("scaling")
    names = list(sizes)
    reports = {k: [] for k in names}
    reps = min(ctx.reps, 2)
    for r in range(reps):
        k0 = r % len(names)
        for k in names[k0:] + names[:k0]:
            reports[k].append(run_python(cli_args(cases[k], model, "onnx", ctx.threads, out / k.replace(" ", "_"))))
    for k in names:
        ok = [r for r in reports[k] if "error" not in r]
        if not ok:
            res.notes.append(f"{k}: failed: {reports[k][0]['error']}")
            continue
        shape = sizes[k]
        res.rows.append({"size": k, "shape": shape, "voxels": shape[0] * shape[1] * shape[2],
                         "input_mb": data.input_bytes(shape) / 2 ** 20,
                         "total_s": median([sum(r["timings_s"].values()) for r in ok]),
                         "backend_s": median([r["backend_seconds"] for r in ok]),
                         "peak_rss_mb": median([r["peak_rss_mb"] for r in ok]), "runs": len(ok)})
    if len(res.rows) >= 2:
        vox = [r["voxels"] for r in res.rows]
        fits = {"time_vs_voxels": loglog_slope(vox, [r["total_s"] for r in res.rows]),
                "backend_time_vs_voxels": loglog_slope(vox, [r["backend_s"] for r in res.rows]),
                "peak_rss_vs_voxels": loglog_slope(vox, [r["peak_rss_mb"] for r in res.rows]),
                "input_vs_voxels": 1.0}
        res.params["fits"] = fits
        lo, hi = TIME_BAND
        res.goal("time growth (log-log slope over voxels)", fits["time_vs_voxels"], f"{lo}..{hi} (linear)",
                 lo <= fits["time_vs_voxels"] <= hi)
        res.goal("peak RSS growth (log-log slope over voxels)", fits["peak_rss_vs_voxels"], "<= 1 (the input's)",
                 fits["peak_rss_vs_voxels"] <= 1.0)
    base = res.rows[0] if res.rows else None
    res.tables.append(table(["size", "shape", "input MB (float32)", "total s", "in backend s", "s per Mvoxel",
                             "peak RSS MB", "peak RSS / input"],
                            [[r["size"], "x".join(map(str, r["shape"])), r["input_mb"], r["total_s"], r["backend_s"],
                              r["total_s"] / r["voxels"] * 1e6, r["peak_rss_mb"], r["peak_rss_mb"] / r["input_mb"]]
                             for r in res.rows]))
    if "fits" in res.params:
        f = res.params["fits"]
        res.tables.append(table(["fitted growth (log-log slope over voxels)", "slope"],
                                [["total time", f["time_vs_voxels"]], ["time in backend", f["backend_time_vs_voxels"]],
                                 ["peak RSS", f["peak_rss_vs_voxels"]], ["input size", 1.0]]))
    res.params.update({"sizes": sizes, "threads": ctx.threads, "reps": reps})
    res.notes.append(fixtures.model_note(ctx) + "; ONNX export with dynamic spatial axes")
    res.notes.append(f"medians of {reps} fresh-process runs per size, sizes in rotated order; total = sum of the "
                     "report's timings_s; peak RSS includes the interpreter and onnxruntime (about the same at every size)")
    if base:
        res.plots.append(plots.loglog(ctx.results / "scaling.png",
                                      {"total time": ([r["voxels"] for r in res.rows], [r["total_s"] for r in res.rows]),
                                       "peak RSS": ([r["voxels"] for r in res.rows], [r["peak_rss_mb"] for r in res.rows])},
                                      "voxels", "growth with volume size"))
    return res
