"""Small helpers on phantom data shared by test modules (imported by name, not from conftest:
the export tests have a conftest of their own)."""

from __future__ import annotations

import numpy as np


def stack(images: dict, order=("t1", "t1ce", "t2", "flair")) -> np.ndarray:
    """Phantom images ``{modality: [I, J, K]}`` as one float32 ``[C, I, J, K]`` array."""
    return np.stack([images[m] for m in order]).astype(np.float32)
