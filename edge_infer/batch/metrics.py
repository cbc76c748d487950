"""Validation mode: Dice and HD95 per region against ground truth, and the short report
(Markdown and a PNG box plot) a team reads before deploying a model version.

The metrics come from DeepMind's ``surface-distance`` package (numpy + scipy; its robust
Hausdorff at 95 % is the HD95 of the BraTS evaluations). Conventions: a region empty in both
masks has Dice 1 and HD95 0; empty in one only, HD95 is infinite.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError, ScanError
from ..writers import commit_files

HINT = "pip install 'edge-infer[batch]'"


def region_labels(labels: Sequence, channels: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Label values inside each region when regions nest in channel order (BraTS: WT holds TC
    holds ET): a label of region ``channels[i]`` counts in ``channels[0..i]``."""
    out: dict[str, list[int]] = {c: [] for c in channels}
    for lb in labels:
        i = list(channels).index(lb.region)
        for c in channels[: i + 1]:
            out[c].append(int(lb.value))
    return {c: tuple(sorted(v)) for c, v in out.items()}


def region_scores(pred: np.ndarray, truth: np.ndarray, regions: dict[str, tuple[int, ...]],
                  spacing_mm: Sequence[float]) -> dict[str, float]:
    """``dice_<region>`` and ``hd95_<region>_mm`` of label maps ``pred`` and ``truth`` (same grid).

    Raises
    ------
    ScanError
        the two label maps are not on the same grid.
    """
    try:
        import surface_distance as sd
    except ImportError:
        raise InputError(f"validation mode needs the surface-distance package: {HINT}") from None
    if pred.shape != truth.shape:
        raise ScanError(f"the ground truth is {'x'.join(map(str, truth.shape))} but the scan "
                        f"{'x'.join(map(str, pred.shape))}; give the truth on the scan's grid")
    out: dict[str, float] = {}
    for name, values in regions.items():
        p, t = np.isin(pred, values), np.isin(truth, values)
        key = name.lower()
        if not p.any() or not t.any():  # conventions (and the package's empty-mask path uses np.Inf,
            # gone in NumPy 2): both empty is a match, one empty a miss at infinite distance
            both = not p.any() and not t.any()
            out[f"dice_{key}"], out[f"hd95_{key}_mm"] = (1.0, 0.0) if both else (0.0, math.inf)
            continue
        out[f"dice_{key}"] = round(float(sd.compute_dice_coefficient(t, p)), 5)
        with warnings.catch_warnings():  # the package calls scipy.ndimage's deprecated sub-namespaces
            warnings.simplefilter("ignore", DeprecationWarning)
            dist = sd.compute_surface_distances(t, p, [float(s) for s in spacing_mm])
        out[f"hd95_{key}_mm"] = round(float(sd.compute_robust_hausdorff(dist, 95)), 4)
    return out


def case_metrics(pred: np.ndarray, truth_path: str | Path, model_manifest) -> dict[str, float]:
    """Scores of a case's label map against the ground-truth file (NIfTI label map)."""
    import nibabel as nib

    name = Path(truth_path).name
    try:
        img = nib.load(str(truth_path))
        if not isinstance(img, nib.spatialimages.SpatialImage):
            raise ScanError(f"the ground truth {name} is not a volume image: give a NIfTI label map")
        truth = np.asarray(img.dataobj).astype(np.int32)
    except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
        raise ScanError(f"cannot read the ground truth {name}: {exc}") from None
    regions = region_labels(model_manifest.labels, model_manifest.channels)
    return region_scores(np.asarray(pred), truth, regions, img.header.get_zooms()[:3])


def metric_columns(rows: Sequence[dict]) -> list[str]:
    return sorted({k for r in rows for k in r if k.startswith(("dice_", "hd95_"))})


def markdown_report(rows: Sequence[dict], title: str) -> str:
    """Median, quartiles, min and max of each metric over the scored cases."""
    cols = metric_columns(rows)
    scored = [r for r in rows if r.get("status") == "ok" and any(c in r for c in cols)]
    failed = sum(r.get("status") != "ok" for r in rows)
    lines = [f"# {title}", "", f"{len(scored)} cases scored of {len(rows)}; {failed} failed.", "",
             "| metric | median | q1 | q3 | min | max |", "|---|---|---|---|---|---|"]
    for c in cols:
        v = np.array([float(r[c]) for r in scored if c in r and r[c] != ""], dtype=np.float64)
        if v.size:
            q = np.percentile(v, [50, 25, 75])
            lines.append(f"| {c} | {q[0]:.4g} | {q[1]:.4g} | {q[2]:.4g} | {v.min():.4g} | {v.max():.4g} |")
    worst = sorted((r for r in scored if "dice_wt" in r), key=lambda r: float(r["dice_wt"]))[:5]
    if worst:
        named = ", ".join(f"{r['case']} ({float(r['dice_wt']):.3f})" for r in worst)
        lines += ["", f"Lowest whole-tumour Dice: {named}"]
    return "\n".join(lines) + "\n"


def boxplot_png(rows: Sequence[dict]) -> bytes | None:
    """A PNG box plot of Dice (left) and HD95 (right) per region, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    import io

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, prefix, label in ((axes[0], "dice_", "Dice"), (axes[1], "hd95_", "HD95 (mm)")):
        cols = [c for c in metric_columns(rows) if c.startswith(prefix)]
        data = [[float(r[c]) for r in rows if r.get("status") == "ok" and c in r and math.isfinite(float(r[c]))]
                for c in cols]
        ax.boxplot(data)
        ax.set_xticks(range(1, len(cols) + 1), [c[len(prefix):].replace("_mm", "").upper() for c in cols])
        ax.set_ylabel(label)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(rows: Sequence[dict], out: Path, title: str) -> list[Path]:
    """Write ``out/validation.md`` (and ``validation.png``) when any case was scored."""
    if not metric_columns(rows):
        return []
    files = {out / "validation.md": markdown_report(rows, title).encode("utf-8")}
    png = boxplot_png(rows)
    if png is not None:
        files[out / "validation.png"] = png
    commit_files(files, folder=out)
    return list(files)
