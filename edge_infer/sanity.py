"""Input sanity checks: refuse a channel that holds no image, warn about intensities that do
not look like MR magnitude.

An MR magnitude image is never negative and two different sequences never agree voxel for
voxel. The checks read the per-channel :class:`~edge_infer.moments.Moments` (taken by the
reader while decoding; computed here once otherwise, and handed on to normalisation), so
they cost no extra pass over the scan; only two channels whose moments agree exactly are
compared voxel by voxel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .errors import ScanError
from .moments import Moments, moments_of
from .scan import Scan

#: share of a channel's nonzero voxels that may be negative before the run warns
NEGATIVE_SHARE = 0.05


def check_not_constant(moments: Sequence[Moments], modalities: Sequence[str]) -> None:
    """Refuse a channel whose voxels are all zero or all one value: it holds no image."""
    for m, name in zip(moments, modalities, strict=True):
        if m.lo == m.hi:
            what = "all zero" if m.lo == 0 else f"constant (every voxel is {m.lo:g})"
            raise ScanError(f"modality {name} is {what}: it holds no image; "
                            f"check which file or series was given as {name}")


def negative_warnings(moments: Sequence[Moments], modalities: Sequence[str],
                      share: float = NEGATIVE_SHARE) -> list[str]:
    """A warning per channel with more than ``share`` of its nonzero voxels negative."""
    out = []
    for m, name in zip(moments, modalities, strict=True):
        frac = m.negative / max(m.nonzero, 1)
        if frac > share:
            out.append(f"modality {name} has {frac:.0%} negative voxels: MR magnitude images have none; "
                       "is it a phase, difference, statistical or already normalised map? "
                       "the result may be meaningless")
    return out


def duplicate_warnings(data: np.ndarray, moments: Sequence[Moments], modalities: Sequence[str]) -> list[str]:
    """A warning per pair of channels that are identical voxel for voxel (the same series
    given twice); only channels with equal moments are compared."""
    out = []
    for a in range(len(modalities)):
        for b in range(a + 1, len(modalities)):
            if moments[a] == moments[b] and np.array_equal(data[a], data[b]):
                out.append(f"modalities {modalities[a]} and {modalities[b]} are identical voxel for voxel: "
                           "the same file or series was probably given for both")
    return out


def checked_scan(scan: Scan) -> tuple[Scan, list[str]]:
    """``scan`` with the moments of its channels (the reader's, else computed here) and the
    warnings about its intensities; raises :class:`ScanError` for a channel with no image."""
    moments = scan.moments
    if moments is None:
        moments = tuple(moments_of(scan.data[c]) for c in range(len(scan.modalities)))
        scan = replace(scan, moments=moments)
    check_not_constant(moments, scan.modalities)
    return scan, [*negative_warnings(moments, scan.modalities),
                  *duplicate_warnings(scan.data, moments, scan.modalities)]
