"""``volume3d`` (issue 8.2): a 3D Flat U-Net with a sliding window, edge-infer against MONAI.

Same weights, same tile, overlap 0.5, Gaussian blending of the logits (edge-infer: sigma =
tile / 8; MONAI ``sliding_window_inference(mode="gaussian", sigma_scale=0.125)``), batch of one
tile, same threads. Each run is a fresh process, alternating; peak RSS is each process's
``VmHWM``. Goals: edge-infer at least 1.5x faster, peak RSS no higher, masks Dice >= 0.999.
"""

from __future__ import annotations

from . import data, models, plots
from .common import Context, Result, alternate, peer, table
from .sidebyside import dice_cell, installed, peer_rows

FULL_SHAPE, FULL_TILE = (128, 128, 64), (32, 32, 32)
QUICK_SHAPE, QUICK_TILE = (40, 40, 24), (16, 16, 16)
GOAL_SPEED = 1.5
DICE_TOL = 0.999
PEERS = {"edge-infer onnxruntime": ("edge-infer", "onnxruntime"), "MONAI sliding_window_inference": ("monai3d", "monai")}
REFERENCE = "edge-infer onnxruntime"


def run(ctx: Context) -> Result:
    shape, tile = (QUICK_SHAPE, QUICK_TILE) if ctx.quick else (FULL_SHAPE, FULL_TILE)
    spec = models.spec_3d(tile, quick=ctx.quick)
    model = models.build(spec, ctx.cache)
    case = data.case(ctx.cache, shape)
    res = Result("volume3d", f"3D sliding window ({'x'.join(map(str, shape))}, tile {tile[0]}^3, overlap 0.5, "
                 "Gaussian): edge-infer against MONAI", "python -m bench volume3d" + (" --quick" if ctx.quick else ""))
    names = installed({n: mod for n, (_, mod) in PEERS.items()}, res, "pip install 'edge-infer[bench]'")
    out = ctx.work("volume3d")

    def once(name: str, rep: int) -> dict:
        kind = PEERS[name][0]
        extra = {"backend": "onnx"} if kind == "edge-infer" else {}
        return peer(kind, case=case, model=model, out=out / name.split()[0], threads=ctx.threads, **extra)

    res.rows.extend(peer_rows(alternate(names, ctx.reps, once), REFERENCE, DICE_TOL, res))
    by = {r["peer"]: r for r in res.rows}
    if REFERENCE in by and "MONAI sliding_window_inference" in by:
        e, m = by[REFERENCE], by["MONAI sliding_window_inference"]
        e["speedup_vs_monai"] = m["seconds"] / e["seconds"]
        res.goal("edge-infer speed-up over MONAI (end to end)", e["speedup_vs_monai"], f">= {GOAL_SPEED}x",
                 e["speedup_vs_monai"] >= GOAL_SPEED)
        res.goal("peak RSS MB, edge-infer vs MONAI", e["peak_rss_mb"], f"<= {m['peak_rss_mb']:.0f}",
                 e["peak_rss_mb"] <= m["peak_rss_mb"])
        res.goal("mask Dice (min of WT/TC/ET), MONAI vs edge-infer", m["dice"]["min"], f">= {DICE_TOL}", m["agree"])
    res.tables.append(table(["peer", "end to end s", "in network s", "process wall s", "peak RSS MB",
                             "Dice vs edge-infer (WT/TC/ET)", "mask foreground"],
                            [[r["peer"], r["seconds"], r["backend_s"], r["process_wall_s"], r["peak_rss_mb"],
                              dice_cell(r),
                              f"{r.get('foreground_fraction', 0):.2%}"]
                             for r in res.rows]))
    info = models.describe(model)
    res.params = {"shape": shape, "tile": tile, "threads": ctx.threads, "reps": ctx.reps, "model": info}
    res.notes.append(f"3D model: flat_unet3d {dict(spec.config)}, {info['parameters']} parameters, "
                     f"{info['macs_per_unit'] / 1e9:.2f} GMAC per tile; "
                     + (f"trained {spec.train_steps} steps on phantoms" if spec.train_steps else "untrained"))
    res.notes.append(f"medians of {ctx.reps} fresh-process runs each, alternating; batch of 1 tile on both sides; "
                     "'end to end' = NIfTI read to mask written, inside the process (imports excluded)")
    res.notes.append("tile positions differ slightly: edge-infer spreads windows evenly over the volume padded to a "
                     "multiple of 8 (nnU-Net's rule), MONAI steps by tile/2 and clamps the last window")
    res.plots.append(plots.bars(ctx.results / "volume3d.png", [r["peer"] for r in res.rows],
                                [r["seconds"] for r in res.rows], "seconds end to end (median)",
                                f"3D sliding window {'x'.join(map(str, shape))}"))
    return res
