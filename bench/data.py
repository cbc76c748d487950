"""Benchmark scans: BraTS-layout phantom case folders (:func:`export.phantoms.write_case`), cached."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

FULL_2D = (240, 240, 155)
QUICK_2D = (64, 64, 16)


def case(cache: Path, shape: Sequence[int], seed: int = 5, skull: bool = True) -> Path:
    """The case folder of a phantom of ``shape`` (1 mm, RAS; with skull, or skull-stripped with
    a background of exact zeros like the BraTS releases), written once."""
    from export.phantoms import case_files, write_case

    shape = tuple(int(s) for s in shape)
    cid = f"phantom_{'x'.join(map(str, shape))}_s{seed}" + ("" if skull else "_stripped")
    files = case_files(cache / "cases", cid)
    if not all(p.is_file() for p in files.values()):
        write_case(cache / "cases", cid, shape=shape, seed=seed, skull=skull)
    return files["seg"].parent


def full_view_case(cache: Path, shape: Sequence[int], seed: int = 5) -> Path:
    """A phantom with no background at all (every voxel of every modality nonzero: anatomy to
    every edge), for the cost of cropping where there is nothing to crop; written once."""
    import nibabel as nib

    from export.phantoms import MODALITIES, make_case

    shape = tuple(int(s) for s in shape)
    folder = cache / "cases" / f"fullview_{'x'.join(map(str, shape))}_s{seed}"
    if not all((folder / f"{folder.name}_{m}.nii.gz").is_file() for m in MODALITIES):
        folder.mkdir(parents=True, exist_ok=True)
        images, _, affine = make_case(shape, 1.0, seed)
        for m in MODALITIES:
            img = np.clip(np.rint(images[m]), 0, 32766).astype(np.int16) + np.int16(1)   # no zero voxel anywhere
            nib.save(nib.Nifti1Image(img, affine), folder / f"{folder.name}_{m}.nii.gz")
    return folder


def input_bytes(shape: Sequence[int], channels: int = 4) -> int:
    """Size of the scan as the runtime holds it: float32, all modalities."""
    return int(np.prod(shape)) * channels * 4


def modality_files(case_dir: Path) -> list[Path]:
    return [case_dir / f"{case_dir.name}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]
