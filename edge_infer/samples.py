"""The bundled sample scan (a synthetic BraTS-layout phantom) and its ground truth."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from .errors import InputError

SAMPLE = "sample"


def sample_case() -> Path:
    """Folder of the bundled sample case (``sample_{t1,t1ce,t2,flair,seg}.nii.gz``)."""
    folder = Path(str(resources.files("edge_infer") / "data" / SAMPLE))
    if not (folder / f"{SAMPLE}_flair.nii.gz").is_file():
        raise InputError(f"the bundled sample scan is missing from {folder}; reinstall edge-infer")
    return folder


def brats_region_dice(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Dice of the BraTS regions WT (labels 1, 2, 4), TC (1, 4) and ET (4)."""
    out = {}
    for region, values in (("WT", (1, 2, 4)), ("TC", (1, 4)), ("ET", (4,))):
        a, b = np.isin(pred, values), np.isin(truth, values)
        denom = int(a.sum()) + int(b.sum())
        out[region] = 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom
    return out


def sample_dice(labels: np.ndarray) -> dict[str, float] | None:
    """Dice of a mask of the sample against its bundled ground truth, if shipped."""
    seg = sample_case() / f"{SAMPLE}_seg.nii.gz"
    if not seg.is_file():
        return None
    import nibabel as nib

    img = nib.load(seg)
    if not isinstance(img, nib.spatialimages.SpatialImage):
        return None
    truth = np.asarray(img.dataobj).astype(np.uint8)
    if truth.shape != labels.shape:
        return None
    return brats_region_dice(labels, truth)
