"""What the end-to-end comparisons (``volume2d``, ``volume3d``) share: which peers are
installed, one row per peer from its fresh-process runs, and the notes on what a row means."""

from __future__ import annotations

import importlib.util

from .common import Result, median, read_mask, region_dice


def installed(modules: dict[str, str], res: Result, hint: str) -> list[str]:
    """The peers (name -> module it needs) whose module is installed; a note for each other."""
    names = [n for n, mod in modules.items() if importlib.util.find_spec(mod)]
    for n, mod in modules.items():
        if n not in names:
            res.notes.append(f"{n}: skipped, {mod} is not installed ({hint})")
    return names


def peer_rows(runs: dict[str, list[dict]], reference: str, tolerance: float, res: Result) -> list[dict]:
    """A row per peer: medians of its runs' times and peak RSS, and the Dice of its last mask
    against the reference peer's last mask; a peer whose every run failed becomes a note."""
    ref = [r for r in runs.get(reference, []) if "error" not in r]
    ref_mask = read_mask(ref[-1]["mask"]) if ref else None
    rows = []
    for name, all_runs in runs.items():
        ok = [r for r in all_runs if "error" not in r]
        if not ok:
            res.notes.append(f"{name}: failed: {all_runs[0]['error']}")
            continue
        row = {"peer": name, "seconds": median([r["seconds"] for r in ok]),
               "backend_s": median([r.get("backend_seconds") for r in ok]),
               "process_wall_s": median([r["process_wall_s"] for r in ok]),
               "peak_rss_mb": median([r["peak_rss_mb"] for r in ok]), "runs": len(ok),
               "seconds_all": [round(r["seconds"], 3) for r in ok], "units": ok[-1].get("units")}
        if ref_mask is not None:
            mask = read_mask(ok[-1]["mask"])
            d = region_dice(ref_mask, mask)
            row["foreground_fraction"] = round(float((mask > 0).mean()), 5)
            row.update(dice_vs=reference, dice=d, tolerance=tolerance, agree=d["min"] >= tolerance)
        rows.append(row)
    trivial = [r["peer"] for r in rows if r.get("foreground_fraction") in (0.0, 1.0)]
    if trivial:
        res.notes.append(f"the masks of {', '.join(trivial)} are all background or all foreground (an untrained "
                         "model): their Dice agreement says nothing about the logits")
    return rows


def dice_cell(row: dict) -> str:
    return "/".join(f"{row['dice'][k]:.4f}" for k in ("WT", "TC", "ET")) if "dice" in row else "-"
