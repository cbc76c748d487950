"""Where a run computes (issue 15): the crop box on the model's padded grid, the empty units,
and the share of compute saved. Glue between :mod:`edge_infer.crop` / :mod:`edge_infer.skip`
(pure geometry) and the planner and engines.

The box lies on the *padded prepared grid* (oriented, resampled, padded for the model), with
its start and stop on multiples of ``divisible_by``: the network's pooling cells then fall
where they fall in a full run, so inside the box a fully convolutional model sees what it
would see there (background is zero in both), and the mask outside the box is background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .crop import (
    Box,
    Profiles,
    box_from_profiles,
    box_voxels,
    check_has_foreground,
    foreground_profiles,
    grow_box,
    margin_voxels,
    oriented_profiles,
    resampled_profiles,
)


def scan_profiles(scan) -> Profiles:
    """The scan's occupancy profiles: the reader's, else taken here (one pass)."""
    return tuple(scan.profiles) if scan.profiles is not None else foreground_profiles(scan.data)


def prepared_profiles(profiles: Profiles, transform: np.ndarray,
                      resample: tuple[Sequence[float], Sequence[float], Sequence[int]] | None) -> Profiles:
    """Profiles of the scan -> profiles of the prepared grid (``resample``: oriented spacing,
    target spacing and prepared shape, when the run resamples)."""
    out = oriented_profiles(profiles, transform)
    return resampled_profiles(out, *resample) if resample is not None else out


def padded_profiles(profiles: Profiles, widths: Sequence[tuple[int, int]]) -> Profiles:
    """Profiles of the padded grid (padding planes hold no foreground)."""
    return tuple(np.pad(np.asarray(p, bool), tuple(w)) for p, w in zip(profiles, widths, strict=False))


def phase_aligned_box(box: Box, shape: Sequence[int], multiple: int, minimum: Sequence[int]) -> Box:
    """``box`` with start and stop on multiples of ``multiple`` (``shape`` is one per axis,
    or the stop is the axis end), at least ``minimum`` long, inside ``shape``."""
    out = []
    for (a, b), n, lo in zip(box, shape, minimum, strict=False):
        n = int(n)
        a, b = (a // multiple) * multiple, min(-(-b // multiple) * multiple, n)
        if b - a < lo:
            b = min(n, a + -(-int(lo) // multiple) * multiple)
            a = max(0, ((b - int(lo)) // multiple) * multiple)
        out.append((int(a), int(b)))
    return tuple(out)


def run_box(m, padded: Profiles, widths: Sequence[tuple[int, int]], fixed: bool, modalities: Sequence[str]) -> Box:
    """The box a run computes on the padded grid, from the padded profiles and the padding
    ``widths`` of the prepared grid.

    3D: the foreground box grown by the manifest's margin, at least a tile. 2D: the slice axis
    stays whole (empty slices are skipped instead); the plane is cropped only for a dynamic
    artifact (``fixed`` False). An axis whose anatomy reaches both edges of the scan is not
    cropped at all (nothing to gain; the run is then the full view's). Raises ScanError for a
    scan without foreground.
    """
    shape = tuple(len(p) for p in padded)
    tight = check_has_foreground(box_from_profiles(padded), modalities)
    box = grow_box(tight, margin_voxels(m.crop.margin_mm, m.spacing_mm), shape)
    whole = [a == before and b == n - after for (a, b), (before, after), n in zip(tight, widths, shape, strict=False)]
    if m.dims == 2:
        whole = [w or ax == m.slice_axis or fixed for ax, w in enumerate(whole)]
    minimum = (1, 1, 1) if m.dims == 2 else tuple(m.tile)
    box = phase_aligned_box(box, shape, m.divisible_by, minimum)
    return tuple((0, n) if w else ab for ab, n, w in zip(box, shape, whole, strict=False))


def box_sizes(box: Box) -> tuple[int, ...]:
    return tuple(b - a for a, b in box)


@dataclass(frozen=True)
class CropSummary:
    """What a run skipped: the box on the padded prepared grid, units skipped, compute saved."""

    box: Box
    padded_shape: tuple[int, ...]
    units: int
    skipped: int
    compute_saved: float
    full_units: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"box": [list(ab) for ab in self.box], "padded_shape": list(self.padded_shape),
                "units": self.units, "units_skipped": self.skipped, "full_units": self.full_units,
                "compute_saved": round(self.compute_saved, 4)}


def compute_saved(full_units: int, full_unit_voxels: int, units: int, skipped: int, unit_voxels: int) -> float:
    """Share of the network's work saved: units run (plus the one background unit) times their
    size, against a full run's."""
    done = (units - skipped + (1 if skipped else 0)) * unit_voxels
    return max(0.0, 1.0 - done / max(full_units * full_unit_voxels, 1))


def summary(box: Box, padded_shape: Sequence[int], units: int, skipped: int, full_units: int, m) -> CropSummary:
    """The :class:`CropSummary` of a run over ``box`` (2D: units are slices of the box's plane;
    3D: windows of the model's tile)."""
    if m.dims == 2:
        unit, full_unit = box_voxels(box) // max(units, 1), box_voxels(tuple((0, int(n)) for n in padded_shape))
        full_unit //= max(full_units, 1)
    else:
        unit = full_unit = int(np.prod(m.tile))
    return CropSummary(tuple(box), tuple(int(n) for n in padded_shape), units, skipped,
                       compute_saved(full_units, full_unit, units, skipped, unit), full_units)


def full_unit_equivalents(volume: dict) -> float | None:
    """Units of full size a run's compute amounts to, from its report's ``plan`` units and
    ``crop`` summary (``volume``: ``{"units": ..., "crop": ...}``); None without units."""
    crop = volume.get("crop")
    if crop:
        return crop["full_units"] * (1.0 - crop["compute_saved"])
    return volume.get("units")


def crop_for_scan(m, scan, g, fixed: bool) -> Box:
    """The run's box (:func:`run_box`) for ``scan`` (channels selected) and its geometry ``g``
    (:func:`edge_infer.plan.geometry_for`), before anything is prepared."""
    from .plan import padding_for
    from .prepare import orientation_transform, reoriented_affine
    from .scan import voxel_spacing

    tf = orientation_transform(scan.affine, m.orientation)
    resample = None
    if g.resampled:
        resample = (voxel_spacing(reoriented_affine(scan.affine, tf, scan.shape)), m.spacing_mm, g.prepared_shape)
    widths = padding_for(m, g.prepared_shape, fixed)
    prof = padded_profiles(prepared_profiles(scan_profiles(scan), tf, resample), widths)
    return run_box(m, prof, widths, fixed, scan.modalities)


def box_moments(m, scan) -> tuple:
    """Each channel's :class:`~edge_infer.moments.Moments` over the scan's crop box (the voxels
    nonzero in any channel, widened by the rule's margin, on the scan's own grid): the statistics
    ``zscore`` takes after a crop to nonzero, as nnU-Net normalises its cropped case. The scan's
    own moments when nothing is nonzero (the run refuses that scan later)."""
    from .moments import moments_of, over_box

    moments = scan.moments if scan.moments is not None else tuple(moments_of(ch) for ch in scan.data)
    tight = box_from_profiles(scan_profiles(scan))
    if tight is None:
        return tuple(moments)
    box = grow_box(tight, margin_voxels(m.crop.margin_mm, scan.spacing), scan.shape)
    return tuple(over_box(mo, box_voxels(box)) for mo in moments)
