"""``crop`` (issue 15): compute only where the anatomy is, against the full field of view.

BraTS-layout phantoms whose background is exactly zero (skull-stripped, like the BraTS
releases), 240x240x155 at 1 mm, with the bundled models (their manifests crop to the nonzero
box): edge-infer as shipped (crop) against ``--no-crop`` and, in 2D, the naive onnxruntime
loop (every full slice, one call per slice). Also: a volume with no background at all (the
cost of cropping where there is nothing to crop, median of alternating runs) and the TFLite
fixed-tile artifact, where only empty slices can be skipped. Each run is a fresh process
(:mod:`bench.peers`), peers alternating; times and peak RSS are medians.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import data, plots
from .common import Context, Result, alternate, peer, read_mask, table
from .sidebyside import dice_cell, peer_rows

MODELS = Path(__file__).resolve().parent.parent / "edge_infer" / "models"
QUICK_SHAPE = (96, 96, 32)
DICE_TOL = 0.995
#: (section, model, case kind, backend, peers, reps in a full run)
SECTIONS = (
    ("2D onnxruntime", "default", "stripped", "onnx", ("crop", "no-crop", "naive onnxruntime loop"), 3),
    ("3D sliding window", "default-3d", "stripped", "onnx", ("crop", "no-crop"), 1),
    ("2D no background", "default", "full-view", "onnx", ("crop", "no-crop"), 5),
    ("2D TFLite fixed tile", "default", "stripped", "tflite", ("crop", "no-crop"), 1),
)
#: section -> (peer, goal speed-up of crop over it)
SPEED_GOALS = {"2D onnxruntime": (("naive onnxruntime loop", 2.0), ("no-crop", 1.6)),
               "3D sliding window": (("no-crop", 1.6),)}


def run(ctx: Context) -> Result:
    shape = QUICK_SHAPE if ctx.quick else data.FULL_2D
    cases = {"stripped": data.case(ctx.cache, shape, skull=False), "full-view": data.full_view_case(ctx.cache, shape)}
    res = Result("crop", f"crop to the anatomy ({'x'.join(map(str, shape))}, zero background): crop against "
                 "--no-crop and a naive loop", "python -m bench crop" + (" --quick" if ctx.quick else ""))
    for section, model, kind, backend, names, reps in SECTIONS:
        reps = 1 if ctx.quick else reps
        out = ctx.work(f"crop/{section.replace(' ', '_')}")

        def once(name: str, rep: int, model=MODELS / model, case=cases[kind], backend=backend, out=out) -> dict:
            where = out / name.replace(" ", "_")
            if name.startswith("naive"):
                return peer("naive2d", case=case, model=model, out=where / "naive.nii.gz", threads=ctx.threads)
            return peer("edge-infer", case=case, model=model, out=where, threads=ctx.threads, backend=backend,
                        no_crop=int(name == "no-crop"))

        runs = alternate(list(names), reps, once)
        rows = peer_rows(runs, "no-crop", DICE_TOL, res)
        _judge(section, rows, runs, cases[kind], res)
        res.rows.extend({"section": section, **r} for r in rows)
    res.tables.append(table(["section", "peer", "end to end s", "in backend s", "peak RSS MB", "time / crop time",
                             "Dice vs --no-crop (WT/TC/ET)", "units skipped", "compute saved"],
                            [[r["section"], r["peer"], r["seconds"], r["backend_s"], r["peak_rss_mb"],
                              r.get("vs_crop"), dice_cell(r), r.get("skipped", "-"), r.get("saved", "-")]
                             for r in res.rows]))
    res.params = {"shape": shape, "threads": ctx.threads, "models": ["default", "default-3d"]}
    res.notes.append("models: the bundled default (2D Flat U-Net, ONNX dynamic plane; TFLite fixed 240x240) and "
                     "default-3d (3D Flat U-Net, tile 96x96x48, overlap 0.5); both manifests crop to the nonzero box")
    res.notes.append("medians of fresh-process runs, peers alternating (reps per section: "
                     + ", ".join(f"{s} {1 if ctx.quick else n}" for s, *_, n in SECTIONS) + "); 'end to end' is "
                     "timed inside the process from reading the NIfTI files to the mask on disk, model load included")
    res.notes.append("the no-background volume is a phantom with skull whose every voxel is nonzero (int16 + 1): "
                     "the box is the whole volume and no slice is skipped; its ratio is the cost of cropping")
    res.plots.append(plots.bars(ctx.results / "crop.png", [f"{r['section']}: {r['peer']}" for r in res.rows],
                                [r["seconds"] for r in res.rows], "seconds end to end (median)",
                                f"crop vs --no-crop, {'x'.join(map(str, shape))}"))
    return res


def _judge(section: str, rows: list[dict], runs: dict, case: Path, res: Result) -> None:
    """Speed-ups, Dice, RSS and skipped-slice goals of one section."""
    by = {r["peer"]: r for r in rows}
    crop = by.get("crop")
    if crop is None:
        return
    last = [r for r in runs["crop"] if "error" not in r][-1].get("crop") or {}
    crop.update(skipped=f"{last.get('units_skipped', 0)} of {last.get('units', 0)}",
                saved=f"{last.get('compute_saved', 0.0):.0%}")
    for r in rows:
        r["vs_crop"] = round(r["seconds"] / crop["seconds"], 3)
    for other, goal in SPEED_GOALS.get(section, ()):
        if other in by:
            res.goal(f"{section}: crop speed-up over {other}", by[other]["vs_crop"], f">= {goal}x",
                     by[other]["vs_crop"] >= goal)
    if "dice" in crop:
        res.goal(f"{section}: mask Dice (min of WT/TC/ET), crop vs --no-crop", crop["dice"]["min"], f">= {DICE_TOL}",
                 crop["agree"])
    if section == "2D onnxruntime" and "no-crop" in by:
        res.goal(f"{section}: peak RSS MB, crop vs --no-crop", crop["peak_rss_mb"],
                 f"<= {by['no-crop']['peak_rss_mb']:.0f}", crop["peak_rss_mb"] <= by["no-crop"]["peak_rss_mb"])
        same = _same_on_empty_slices(runs, case)
        res.goal(f"{section}: identical labels on the skipped slices", same, "True", same)
    if section == "2D no background" and "no-crop" in by:
        slower = crop["seconds"] / by["no-crop"]["seconds"]
        res.goal(f"{section}: crop time / --no-crop time", round(slower, 4), "<= 1.02", slower <= 1.02)


def _same_on_empty_slices(runs: dict, case: Path) -> bool:
    """Whether crop and --no-crop label every empty axial slice of ``case`` the same."""
    import nibabel as nib

    occupied = np.zeros(0, bool)
    for path in data.modality_files(case):
        img = np.asarray(nib.load(str(path)).dataobj)
        along = (img != 0).any(axis=(0, 1))
        occupied = along if occupied.size == 0 else occupied | along
    a, b = (read_mask([r for r in runs[n] if "error" not in r][-1]["mask"]) for n in ("crop", "no-crop"))
    empty = np.flatnonzero(~occupied)
    return bool(np.array_equal(a[..., empty], b[..., empty]))
