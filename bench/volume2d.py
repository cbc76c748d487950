"""``volume2d`` (issue 8.1): a whole 2D volume, NIfTI on disk to mask on disk, against peers.

edge-infer (onnxruntime; LiteRT) against PyTorch eager on the same weights and threads, and a
naive onnxruntime loop (one call per slice, plain numpy pre/post). Each run is a fresh process
(:mod:`bench.peers`), peers alternating; times are medians. Goals: edge-infer (onnxruntime)
at least 2x faster than PyTorch eager and 1.3x faster than the naive loop, end to end, with
masks agreeing (Dice of every BraTS region at least 0.999).
"""

from __future__ import annotations

from . import fixtures, plots
from .common import Context, Result, alternate, peer, table
from .sidebyside import dice_cell, installed, peer_rows

#: row name -> (peer, extra arguments, module it needs)
PEERS = {
    "edge-infer onnxruntime": ("edge-infer", {"backend": "onnx"}, "onnxruntime"),
    "edge-infer LiteRT": ("edge-infer", {"backend": "tflite"}, "ai_edge_litert"),
    "PyTorch eager": ("torch2d", {}, "torch"),
    "naive onnxruntime loop": ("naive2d", {}, "onnxruntime"),
}
REFERENCE = "edge-infer onnxruntime"
GOALS = {"PyTorch eager": 2.0, "naive onnxruntime loop": 1.3}
DICE_TOL = 0.999
#: rounds in a full run: the naive-loop ratio sits near its goal, so medians of more runs
FULL_REPS = 5


def run(ctx: Context) -> Result:
    shape = fixtures.shape2d(ctx)
    case, model = fixtures.case2d(ctx), fixtures.model2d(ctx)
    res = Result("volume2d", f"2D volume end to end ({'x'.join(map(str, shape))}): edge-infer against PyTorch eager "
                 "and a naive loop", "python -m bench volume2d" + (" --quick" if ctx.quick else ""))
    names = installed({n: mod for n, (_, _, mod) in PEERS.items()}, res, "pip install 'edge-infer[bench]'")
    out = ctx.work("volume2d")

    def once(name: str, rep: int) -> dict:
        kind, extra, _ = PEERS[name]
        return peer(kind, case=case, model=model, out=out / name.replace(" ", "_"), threads=ctx.threads, **extra)

    reps = ctx.reps if ctx.quick else max(ctx.reps, FULL_REPS)
    res.rows.extend(peer_rows(alternate(names, reps, once), REFERENCE, DICE_TOL, res))
    ref_s = next((r["seconds"] for r in res.rows if r["peer"] == REFERENCE), None)
    for row in res.rows:
        name = row["peer"]
        row["edge_infer_speedup"] = row["seconds"] / ref_s if ref_s else None
        if name in GOALS and row["edge_infer_speedup"] is not None:
            res.goal(f"edge-infer (onnxruntime) speed-up over {name}", row["edge_infer_speedup"],
                     f">= {GOALS[name]}x", row["edge_infer_speedup"] >= GOALS[name])
        if name != REFERENCE and "dice" in row:
            res.goal(f"mask Dice (min of WT/TC/ET), {name} vs {REFERENCE}", row["dice"]["min"], f">= {DICE_TOL}",
                     row["agree"])
    res.tables.append(table(["peer", "end to end s", "in backend s", "process wall s", "peak RSS MB",
                             "peer time / edge-infer time", "Dice vs edge-infer (WT/TC/ET)", "mask foreground"],
                            [[r["peer"], r["seconds"], r["backend_s"], r["process_wall_s"], r["peak_rss_mb"],
                              r["edge_infer_speedup"],
                              dice_cell(r),
                              f"{r.get('foreground_fraction', 0):.2%}"]
                             for r in res.rows]))
    res.params = {"shape": shape, "threads": ctx.threads, "reps": reps, "model": model.name}
    res.notes.append(fixtures.model_note(ctx))
    res.notes.append(f"medians of {reps} runs, each in a fresh process, peers alternating; 'end to end' is timed "
                     "inside the process from reading the NIfTI files to the mask on disk, model loading included "
                     "(interpreter start and library imports excluded: they are in 'process wall')")
    res.notes.append(f"every peer uses the same {ctx.threads} CPU threads: edge-infer as its planner's default on a CPU, "
                     f"{ctx.threads} single-threaded backend calls in flight on different slices (`--workers`); "
                     "PyTorch and the naive loop as one call with all the threads; 'in backend s' is the wall time "
                     "during which at least one backend call runs")
    res.notes.append("PyTorch eager: batches of 8 slices, torch.inference_mode, torch.set_num_threads("
                     f"{ctx.threads}); naive loop: one session.run per slice, the per-channel statistics computed "
                     "once per volume and each slice normalised, sigmoid-ed and thresholded in plain numpy")
    res.plots.append(plots.bars(ctx.results / "volume2d.png", [r["peer"] for r in res.rows],
                                [r["seconds"] for r in res.rows], "seconds end to end (median)",
                                f"2D volume {'x'.join(map(str, shape))}"))
    return res
