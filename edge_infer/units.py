"""Which units a run computes (issue 15): the crop box on the padded grid, and which slices
(2D) or windows (3D) inside it are entirely background and reuse the model's own output.

:func:`units_to_run` reads the box from the plan (:func:`edge_infer.planning.plan_run`) and
the occupancy profiles from the scan (:mod:`edge_infer.crop`); the engines take the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .crop import Box
from .cropping import CropSummary, box_sizes, prepared_profiles, scan_profiles, summary
from .engines import window_slices
from .plan import Mode, Plan, count_units
from .prepare import Prepared, SliceSource, channel_scales
from .skip import background_values, empty_windows


@dataclass(frozen=True)
class Where:
    """Where the engine computes: ``box`` on the padded grid (None: everywhere), ``skip`` (a
    bool per slice or per window of the box, or None), the padding ``widths`` of the prepared
    grid (all three axes) and the padded grid's shape."""

    box: Box | None
    skip: np.ndarray | None
    widths: list[tuple[int, int]]
    padded_shape: tuple[int, ...]

    def plane_box(self, slice_axis: int, plane_shape: Sequence[int]) -> Box:
        """The box's in-plane ranges of a 2D run (the whole padded plane without a box)."""
        if self.box is None:
            return tuple((0, int(n)) for n in plane_shape)
        return tuple(ab for ax, ab in enumerate(self.box) if ax != slice_axis)

    def summary(self, m, plan: Plan) -> CropSummary | None:
        """What the run saved, for the report (None without a box)."""
        if self.box is None:
            return None
        full = count_units(plan.mode, self.padded_shape, plan.tile, plan.overlap, m.slice_axis, m.windows)
        skipped = int(self.skip.sum()) if self.skip is not None else 0
        return summary(self.box, self.padded_shape, plan.units, skipped, full, m)


def units_to_run(scan, m, plan: Plan, prep: Prepared, widths: Sequence[tuple[int, int]],
                 background: np.ndarray | None = None) -> Where:
    """The :class:`Where` of a run of ``m`` over ``scan`` prepared as ``prep`` and padded by
    ``widths`` (per axis of the prepared grid), following ``plan.crop_box``. ``background``:
    the normalised value of a zero voxel per channel when the scan was normalised before
    ``prep`` (else taken from the manifest's normalisation and the scan's moments)."""
    pairs = [(before, after) for before, after in widths]
    padded_shape = tuple(n + a + b for n, (a, b) in zip(prep.grid_shape, pairs, strict=False))
    box = plan.crop_box
    if box is None:
        return Where(None, None, pairs, padded_shape)
    resample = (prep.oriented_spacing, prep.target_spacing, prep.grid_shape) if prep.resampled else None
    profiles = prepared_profiles(scan_profiles(scan), prep.transform, resample)
    if plan.mode is Mode.SLICES:      # every empty slice gets the same input: exact
        return Where(box, ~np.asarray(profiles[m.slice_axis], bool), pairs, padded_shape)
    if background is None:
        background = background_values(channel_scales(scan.data, m.normalization, scan.moments))
    uniform = bool(np.all(background == 0))
    windows = window_slices(box_sizes(box), plan.window_tile, plan.overlap, m.windows)
    offsets = [(before - a, 0) for (before, _), (a, _) in zip(pairs, box, strict=False)]
    return Where(box, empty_windows(windows, profiles, offsets, uniform), pairs, padded_shape)


def crop_plane(volume, plane: Box):
    """A slice-major ``[S, C, H, W]`` volume (array or :class:`SliceSource`) cut to ``plane``
    (ranges on the padded plane); the volume itself when ``plane`` is all of it."""
    if all(a == 0 and b == n for (a, b), n in zip(plane, volume.shape[2:], strict=False)):
        return volume
    if isinstance(volume, SliceSource):
        return volume.cropped(plane)
    (a, b), (c, d) = plane
    return volume[:, :, a:b, c:d]
