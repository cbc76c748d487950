"""Training data: BraTS-layout case folders (real or phantom) and in-memory phantoms.

Arrays follow the runtime: channels in ``MODALITIES`` order, RAS orientation
(``nibabel.as_closest_canonical``), axis 2 the slice axis, ``zscore_nonzero`` normalisation
(mean/std over nonzero voxels per channel; zero voxels stay 0), targets the nested regions
``[WT, TC, ET]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .errors import DataError
from .phantoms import MODALITIES, brats_regions, make_case, tumour_slab_bounds

REGIONS = ("WT", "TC", "ET")


@dataclass
class Case:
    """One normalised case: ``image`` float32 [C, I, J, K], ``target`` uint8 [3, I, J, K]."""

    case_id: str
    image: np.ndarray
    target: np.ndarray


def zscore_nonzero(image: np.ndarray) -> np.ndarray:
    """Per channel: (x - mean) / std over nonzero voxels; zero voxels stay 0 (the runtime's rule)."""
    out = np.zeros(image.shape, np.float32)
    for c in range(image.shape[0]):
        ch = image[c]
        nz = ch != 0
        if not nz.any():
            continue
        vals = ch[nz].astype(np.float64)
        std = vals.std()
        out[c][nz] = ((vals - vals.mean()) / (std if std > 0 else 1.0)).astype(np.float32)
    return out


def find_cases(folder: str | Path) -> list[Path]:
    """Case folders under ``folder``: sub-folders holding ``*_flair.nii(.gz)``-style files."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist")
    cases = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.nii*")))
    if not cases:
        raise DataError(f"no case folders with NIfTI files in {root} (expected CASE/CASE_t1.nii.gz ...)")
    return cases


def _file_for(case: Path, name: str) -> Path:
    for suffix in (".nii.gz", ".nii"):
        p = case / f"{case.name}_{name}{suffix}"
        if p.is_file():
            return p
    raise DataError(f"case {case.name} has no {case.name}_{name}.nii.gz; a BraTS case needs "
                    f"{', '.join(MODALITIES)} and seg")


def read_case(case: str | Path, need_seg: bool = True) -> Case:
    """Read a BraTS 2020/2021 case folder ``CASE/CASE_{t1,t1ce,t2,flair,seg}.nii.gz``.

    Volumes are reoriented to RAS, checked to share one grid, normalised per channel.
    BraTS 2021 label 4 and the 2023 renumbering (3 = enhancing) both map to ET.
    """
    import nibabel as nib

    case = Path(case)
    names = [*MODALITIES, "seg"] if need_seg else list(MODALITIES)
    files = {n: _file_for(case, n) for n in names}
    vols, grid = {}, None
    for n, f in files.items():
        try:
            img = nib.as_closest_canonical(nib.load(str(f)))
            arr = np.asarray(img.dataobj)
        except Exception as exc:  # nibabel raises several types for broken files
            raise DataError(f"cannot read {f}: {exc}") from None
        if arr.ndim != 3:
            raise DataError(f"{f.name} has {arr.ndim} dimensions; expected a 3D volume")
        if grid is None:
            grid = (arr.shape, img.affine)
        elif arr.shape != grid[0] or not np.allclose(img.affine, grid[1], atol=1e-3):
            raise DataError(f"{f.name} is not on the grid of {files[names[0]].name} "
                            f"({arr.shape} vs {grid[0]}); co-register the case first")
        vols[n] = arr
    image = zscore_nonzero(np.stack([vols[m].astype(np.float32) for m in MODALITIES]))
    if need_seg:
        seg = np.rint(vols["seg"]).astype(np.uint8)
        seg[seg == 3] = 4
        bad = set(np.unique(seg)) - {0, 1, 2, 4}
        if bad:
            raise DataError(f"{files['seg'].name} has labels {sorted(bad)}; BraTS labels are 0, 1, 2, 4")
        target = brats_regions(seg)
    else:
        target = np.zeros((3, *image.shape[1:]), np.uint8)
    return Case(case.name, image, target)


def read_cases(folder: str | Path, limit: int | None = None) -> list[Case]:
    """All cases in a BraTS-layout folder (the first ``limit`` in name order)."""
    return [read_case(c) for c in find_cases(folder)[:limit]]


def phantom_cases(seeds: Iterable[int], shape: Sequence[int] = (240, 240, 155),
                  keep_slices: int | None = None, skull: bool | None = True) -> list[Case]:
    """In-memory phantom cases, normalised like the runtime.

    ``keep_slices`` keeps only that many axial slices around the tumour (saves memory).
    ``skull`` None alternates: odd seeds skull-stripped (like BraTS), even seeds with skull.
    """
    out = []
    for s in seeds:
        with_skull = (int(s) % 2 == 0) if skull is None else skull
        images, seg, _ = make_case(shape, seed=int(s), skull=with_skull)
        img = zscore_nonzero(np.stack([images[m] for m in MODALITIES]))   # whole volume, as the runtime
        if keep_slices and keep_slices < img.shape[3]:
            k0, k1 = tumour_slab_bounds(seg, keep_slices)
            img, seg = img[..., k0:k1], seg[..., k0:k1]
        out.append(Case(f"phantom_{int(s):04d}", img, brats_regions(seg)))
    return out
