"""Intensity statistics of one channel, computed once, in one pass, wherever the voxels are hot.

:func:`moments_of` reads a channel slab by slab in memory order (count, mean and spread of
its nonzero voxels, its minimum and maximum (a NaN anywhere makes both NaN), how many voxels
are negative, all in float64, slabs merged with Chan et al.'s
formula so the variance is never a difference of two large totals). The NIfTI reader runs
it in its per-file threads right after a file is decoded, so normalisation later needs no
extra pass over the scan; :func:`scale_for` turns the moments into the ``(offset, scale,
keep_zero)`` of each normalisation method.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

#: bytes read per step: small enough to stay in cache
SLAB_BYTES = 1 << 20
METHODS = ("none", "zscore", "zscore_nonzero", "minmax")


@dataclass(frozen=True)
class Moments:
    size: int            # all voxels
    nonzero: int         # voxels != 0
    mean: float          # over the nonzero voxels
    m2: float            # sum of squared deviations from ``mean`` over the nonzero voxels
    lo: float            # minimum over all voxels (NaN when any voxel is NaN)
    hi: float            # maximum over all voxels (NaN when any voxel is NaN)
    negative: int = 0    # voxels < 0


def memory_order(x: np.ndarray) -> np.ndarray:
    """``x`` with its axes permuted so the last one has the smallest stride (a view)."""
    return x.transpose(np.argsort([-abs(st) for st in x.strides], kind="stable"))


def slabs(n_slices: int, plane_voxels: int, itemsize: int = 4) -> list[slice]:
    """Ranges along a first axis of ``n_slices`` planes, about :data:`SLAB_BYTES` each."""
    step = max(1, SLAB_BYTES // (itemsize * max(plane_voxels, 1)))
    return [slice(k, min(k + step, n_slices)) for k in range(0, n_slices, step)]


class MomentsSum:
    """:class:`Moments` built up slab by slab (Chan et al.'s merge, float64), for readers that
    see a channel a piece at a time while it is hot in cache. Slabs give the same figures as
    :func:`moments_of` when they are the same ranges of the same values."""

    def __init__(self, size: int):
        self.size = int(size)
        self.n, self.mean, self.m2 = 0, 0.0, 0.0
        self.lo, self.hi = np.inf, -np.inf
        self.negative = 0

    def add(self, slab: np.ndarray) -> None:
        if slab.size == 0:
            return
        # extremes and count on the voxels' own type (exact, half the bytes of float64);
        # np.minimum/np.maximum keep a NaN (Python's min/max drop it: min(inf, nan) is inf)
        lo = float(slab.min())
        self.lo, self.hi = float(np.minimum(self.lo, lo)), float(np.maximum(self.hi, slab.max()))
        if lo < 0:                                        # MR magnitude: almost never, so no pass
            self.negative += int(np.count_nonzero(slab < 0))
        nb = int(np.count_nonzero(slab))
        if nb == 0:
            return
        v = slab.astype(np.float64).ravel()
        s1 = float(v.sum())                               # zeros add nothing to either sum
        mb = s1 / nb
        m2b = max(float(np.einsum("i,i->", v, v)) - s1 * mb, 0.0)  # not BLAS: no thread pool inside readers' threads
        delta, total = mb - self.mean, self.n + nb
        self.mean += delta * nb / total
        self.m2 += m2b + delta * delta * self.n * nb / total
        self.n = total

    def result(self) -> Moments:
        if self.n == 0 and self.lo == np.inf:
            return Moments(self.size, 0, 0.0, 0.0, 0.0, 0.0)
        return Moments(self.size, self.n, self.mean, self.m2, self.lo, self.hi, self.negative)


def moments_of(ch: np.ndarray) -> Moments:
    """The :class:`Moments` of one channel (any view, any real dtype), in one read."""
    x3 = memory_order(ch)
    acc = MomentsSum(x3.size)
    if x3.ndim == 0 or x3.size == 0:
        return acc.result()
    for sl in slabs(x3.shape[0], int(np.prod(x3.shape[1:])), x3.itemsize):
        acc.add(x3[sl])
    return acc.result()


def over_box(m: Moments, voxels: int) -> Moments:
    """The moments of the same channel over a box of ``voxels`` voxels holding all its nonzero
    voxels (the zeros outside the box dropped): what ``zscore`` sees after a crop to nonzero."""
    if not m.nonzero <= voxels <= m.size:
        raise ValueError(f"a box of {voxels} voxels cannot hold the {m.nonzero} nonzero voxels of a "
                         f"{m.size}-voxel channel")
    return replace(m, size=int(voxels))


def scale_for(m: Moments, method: str) -> tuple[float, float, bool]:
    """``(offset, scale, keep_zero)``: a channel normalised by ``method`` is
    ``(x - offset) * scale``, with its zero voxels left at zero when ``keep_zero``.

    ``zscore_nonzero``: mean and std over nonzero voxels (the BraTS convention); ``zscore``:
    over all voxels; ``minmax``: to [0, 1]; ``none``. An all-zero channel stays as it is.
    """
    if method not in METHODS:
        raise ValueError(f"unknown normalization {method!r}")
    if method == "none":
        return 0.0, 1.0, False
    if method == "minmax":
        return m.lo, 1.0 / max(m.hi - m.lo, 1e-8), False
    if m.nonzero == 0:
        return 0.0, 1.0, False
    if method == "zscore_nonzero":
        return m.mean, 1.0 / max(float(np.sqrt(m.m2 / m.nonzero)), 1e-8), True
    zeros = m.size - m.nonzero                            # merge in the zeros as a group at 0
    mean = m.mean * m.nonzero / m.size
    m2 = m.m2 + m.mean * m.mean * m.nonzero * zeros / m.size
    return mean, 1.0 / max(float(np.sqrt(m2 / m.size)), 1e-8), False
