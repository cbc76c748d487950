"""``precision`` (issue 8.3): fp32 / fp16 / int8, unpruned / pruned, per backend, with Dice.

Variants come from what ``export/`` offers: :func:`export.onnx_export.onnx_to_fp16` and
``onnx_to_int8`` (static QDQ), :mod:`export.tflite_export` (fp16 weights, static int8), and
structured L1 pruning (:func:`export.prune.prune`, half the parameters; fine-tuned as long as
the base model was trained). All variants run in one process on the same scan, in rotated
order each round; each row gives the median whole-volume time (``segment``: prepare, infer,
finish), the time inside the backend, and the Dice of its mask against the same backend's
fp32 unpruned mask.
"""

from __future__ import annotations

import time

from edge_infer.vocab import PRECISIONS

from . import fixtures, models, plots
from .common import Context, Result, median, region_dice, table

PRUNE = 0.5
#: training steps after pruning, as the export stage recommends (full runs; quick models are untrained)
FINETUNE = 40
#: expected agreement with the fp32 unpruned mask (export/verify.py's tolerances); pruned
#: networks are different networks, their Dice is reported, not required
TOLERANCE = {"fp32": 0.999, "fp16": 0.99, "int8": 0.99}


def run(ctx: Context) -> Result:
    from edge_infer.model import load_model
    from edge_infer.segmentation import segment
    from edge_infer.readers import read_scan

    shape = fixtures.slab_shape(ctx)
    trained = fixtures.spec2d(ctx).train_steps > 0
    finetune = FINETUNE if trained else 0
    folders = {"unpruned": fixtures.model2d(ctx),
               f"pruned {PRUNE:.0%} (L1)": fixtures.model2d(ctx, prune=PRUNE, finetune_steps=finetune)}
    res = Result("precision", f"Precision and pruning ({'x'.join(map(str, shape))}, whole volume)",
                 "python -m bench precision" + (" --quick" if ctx.quick else ""))
    scan = read_scan([fixtures.slab2d(ctx)], ("t1", "t1ce", "t2", "flair"))
    reps = min(ctx.reps, 2)
    loaded, meta = {}, {}
    for prune, folder in folders.items():
        info = models.describe(folder)
        for backend in ("onnx", "tflite"):
            for p in PRECISIONS:
                key = (prune, backend, p)
                try:
                    loaded[key] = load_model(folder, backend=backend, precision=p, threads=ctx.threads)
                except Exception as exc:  # a variant the backend cannot load is reported, not fatal
                    res.notes.append(f"{backend}/{p} {prune}: not loadable: {str(exc).splitlines()[0]}")
                    continue
                meta[key] = {"parameters": info["parameters"], "macs": info["macs_per_unit"],
                             "bytes": info["artifacts"][f"{backend}/{p}"]}
    keys = list(loaded)
    times = {k: [] for k in keys}
    backend_s = {k: [] for k in keys}
    labels = {}
    for r in range(reps):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            t0 = time.perf_counter()
            seg = segment(scan, loaded[k])
            times[k].append(time.perf_counter() - t0)
            backend_s[k].append(seg.backend_seconds)
            labels[k] = seg.labels
    for k in keys:
        prune, backend, p = k
        ref = labels.get(("unpruned", backend, "fp32"))
        d = region_dice(ref, labels[k]) if ref is not None else None
        tol = TOLERANCE[p] if prune == "unpruned" and (trained or p == "fp32") else None
        row = {"backend": backend, "precision": p, "pruning": prune, "seconds": median(times[k]),
               "backend_s": median(backend_s[k]), **meta[k], "dice_vs": f"{backend}/fp32 unpruned", "dice": d,
               "tolerance": tol, "agree": (d["min"] >= tol) if (d is not None and tol is not None) else None}
        res.rows.append(row)
    for backend in ("onnx", "tflite"):
        base = next((r for r in res.rows if r["backend"] == backend and r["precision"] == "fp32"
                     and r["pruning"] == "unpruned"), None)
        for r in res.rows:
            if base and r["backend"] == backend:
                r["speedup_vs_fp32"] = base["seconds"] / r["seconds"]
    res.tables.append(table(["backend", "precision", "pruning", "parameters", "file KB", "volume s", "in backend s",
                             "speed-up vs fp32", "Dice vs fp32 unpruned (WT/TC/ET)", "tolerance"],
                            [[r["backend"], r["precision"], r["pruning"], r["parameters"], r["bytes"] / 1024,
                              r["seconds"], r["backend_s"], r.get("speedup_vs_fp32"),
                              "/".join(f"{r['dice'][x]:.4f}" for x in ("WT", "TC", "ET")) if r["dice"] else "-",
                              r["tolerance"] or "reported only"] for r in res.rows]))
    for r in res.rows:
        if r["tolerance"] is not None and r["precision"] != "fp32":
            res.goal(f"{r['backend']}/{r['precision']} Dice vs fp32", r["dice"]["min"], f">= {r['tolerance']}", r["agree"])
    res.params = {"shape": shape, "threads": ctx.threads, "reps": reps, "prune_amount": PRUNE}
    res.notes.append(fixtures.model_note(ctx))
    if not trained:
        res.notes.append("quick mode: the model is untrained, so fp16/int8 Dice is reported, not required")
    res.notes.append("pruned: structured L1 pruning of the same model to half its parameters, "
                     + (f"fine-tuned {finetune} steps on the training phantoms" if finetune else
                        "not fine-tuned (its Dice shows what pruning alone costs)"))
    res.notes.append(f"medians of {reps} rounds in one process, variants in rotated order; 'volume s' is "
                     "edge_infer.segmentation.segment (prepare, infer, finish) on a scan read once")
    res.notes.append(f"int8 calibrated on {models.CALIBRATION}; fp16 ONNX keeps float32 io "
                     "(Casts at the edges); TFLite fp16 stores fp16 weights, computed in fp32 on this CPU")
    res.plots.append(plots.bars(ctx.results / "precision.png",
                                [f"{r['backend']}/{r['precision']} {r['pruning'].split()[0]}" for r in res.rows],
                                [r["seconds"] for r in res.rows], "seconds per volume (median)",
                                "precision and pruning"))
    return res
