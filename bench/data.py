"""Benchmark scans: BraTS-layout phantom case folders (:func:`export.phantoms.write_case`), cached."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

FULL_2D = (240, 240, 155)
QUICK_2D = (64, 64, 16)


def case(cache: Path, shape: Sequence[int], seed: int = 5) -> Path:
    """The case folder of a phantom of ``shape`` (1 mm, RAS, with skull), written once."""
    from export.phantoms import case_files, write_case

    shape = tuple(int(s) for s in shape)
    cid = f"phantom_{'x'.join(map(str, shape))}_s{seed}"
    files = case_files(cache / "cases", cid)
    if not all(p.is_file() for p in files.values()):
        write_case(cache / "cases", cid, shape=shape, seed=seed)
    return files["seg"].parent


def input_bytes(shape: Sequence[int], channels: int = 4) -> int:
    """Size of the scan as the runtime holds it: float32, all modalities."""
    return int(np.prod(shape)) * channels * 4


def modality_files(case_dir: Path) -> list[Path]:
    return [case_dir / f"{case_dir.name}_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]
