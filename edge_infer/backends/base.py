"""The one small interface every inference backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a dynamic dimension) and numpy dtype of one model tensor."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


class Backend(Protocol):
    """A loaded model that maps a float32 batch to a float32 batch.

    ``run`` takes any batch size; a backend whose model has a fixed batch dimension splits
    or resizes internally. Inputs and outputs are float32 whatever the model's precision.
    """

    name: str
    path: Path
    threads: int

    @property
    def input(self) -> TensorSpec: ...

    @property
    def output(self) -> TensorSpec: ...

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def replica(self) -> Backend:
        """A backend that may run at the same time as this one, in another thread (the same
        object where the runtime's run is thread-safe)."""
        ...

    def describe(self) -> dict: ...
