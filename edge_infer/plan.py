"""The plan of a run: how the engine will walk the volume, with which backend and batch.

:func:`make_plan` is pure: manifest facts and sizes in, a :class:`Plan` out. The report
shows the plan that ran.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum

from .manifest import Manifest


class Mode(str, Enum):
    SLICES = "slices"
    WINDOWS = "windows"


#: default number of slices per backend call for 2D models, and tiles for 3D models
DEFAULT_SLICE_BATCH = 8
DEFAULT_TILE_BATCH = 1
DEFAULT_OVERLAP = 0.5


@dataclass(frozen=True)
class Plan:
    mode: Mode
    backend: str
    precision: str
    threads: int
    batch: int
    tile: tuple[int, ...] | None
    overlap: float
    slice_axis: int
    padded_shape: tuple[int, int, int]
    units: int                     # slices or tiles the engine will run
    board: str | None = None
    estimated_peak_mb: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mode"] = self.mode.value
        return d


def count_units(mode: Mode, padded_shape: tuple[int, int, int], tile: tuple[int, ...] | None,
                overlap: float, slice_axis: int) -> int:
    """Number of slices (2D) or windows (3D) the engine will run."""
    if mode is Mode.SLICES:
        return int(padded_shape[slice_axis])
    from .engines import window_starts

    n = 1
    for size, t in zip(padded_shape, tile or ()):
        n *= len(window_starts(size, t, overlap))
    return n


def make_plan(manifest: Manifest, padded_shape: tuple[int, int, int], *, backend: str, precision: str,
              threads: int, batch: int | None = None, overlap: float | None = None) -> Plan:
    """The plan for running ``manifest``'s model over a prepared volume of ``padded_shape``."""
    mode = Mode.SLICES if manifest.dims == 2 else Mode.WINDOWS
    ov = DEFAULT_OVERLAP if overlap is None else float(overlap)
    b = batch or (DEFAULT_SLICE_BATCH if mode is Mode.SLICES else DEFAULT_TILE_BATCH)
    tile = manifest.tile if mode is Mode.WINDOWS else None
    units = count_units(mode, padded_shape, tile, ov, manifest.slice_axis)
    return Plan(mode=mode, backend=backend, precision=precision, threads=threads, batch=min(b, units),
                tile=tile, overlap=ov if mode is Mode.WINDOWS else 0.0, slice_axis=manifest.slice_axis,
                padded_shape=tuple(int(s) for s in padded_shape), units=units)
