"""Crop to the anatomy: the foreground box of a scan and its geometry, as pure functions.

A voxel is *foreground* when it is nonzero in any channel (skull-stripped scans, such as the
BraTS releases, are exactly zero outside the brain; nnU-Net crops every case to this box).
The box is found from per-axis *occupancy profiles* (one boolean per plane: does the plane
hold any foreground?), which :func:`foreground_profiles` takes with any-reductions and
:class:`ProfileSum` builds up slab by slab while a reader has the voxels in cache, so the
box costs no extra pass over the scan. The box is then grown by a margin in millimetres
(:func:`margin_voxels`, anisotropic), brought to the model's ``divisible_by`` and tile
(:func:`align_box`), carried to the model's oriented and resampled grid
(:func:`oriented_box`, :func:`resampled_box`), and a mask computed inside it goes back into
the full grid with background outside (:func:`place_in_full`).

A box is a tuple of half-open ``(start, stop)`` voxel ranges, one per spatial axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ModelError, ScanError
from .fields import short_repr, typed_field

Box = tuple[tuple[int, int], ...]
#: occupancy profiles: per spatial axis, one bool per plane (does it hold any foreground?)
Profiles = tuple[np.ndarray, ...]
#: the crop modes a manifest may name
CROP_MODES = ("nonzero", "none")


# -- the foreground ------------------------------------------------------------------------
def foreground_profiles(data: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per spatial axis, which planes hold a voxel that is nonzero in any channel.

    Parameters
    ----------
    data : ``[C, *spatial]`` array of any real dtype

    Returns
    -------
    tuple of bool arrays, one per spatial axis, of that axis's length

    Notes
    -----
    One comparison per channel into a shared boolean volume, then one any-reduction per
    axis over that (eight times smaller) volume.
    """
    occupied = np.zeros(data.shape[1:], dtype=bool)
    for channel in data:
        np.logical_or(occupied, channel != 0, out=occupied)
    axes = range(occupied.ndim)
    return tuple(np.asarray(occupied.any(axis=tuple(b for b in axes if b != a))) for a in axes)


class ProfileSum:
    """Occupancy profiles built up slab by slab along the first axis of a channel.

    A reader that walks a channel in slabs of planes (``memory_order`` view, as
    :class:`edge_infer.moments.MomentsSum` does) calls :meth:`add` on each slab while it is
    in cache; :meth:`result` then equals :func:`foreground_profiles` of that channel.
    Profiles of several channels combine with :func:`union_profiles`.
    """

    def __init__(self, shape: Sequence[int]):
        self.profiles = tuple(np.zeros(int(n), dtype=bool) for n in shape)

    def add(self, start: int, slab: np.ndarray) -> None:
        """Record ``slab`` (planes ``start:start + len(slab)`` of the first axis)."""
        nz = slab != 0
        rest = tuple(range(1, nz.ndim))
        along = nz.any(axis=rest)
        self.profiles[0][start:start + len(along)] |= along
        if along.any():
            for a in rest:
                np.logical_or(self.profiles[a], nz.any(axis=tuple(b for b in range(nz.ndim) if b != a)),
                              out=self.profiles[a])

    def result(self) -> tuple[np.ndarray, ...]:
        return tuple(p.copy() for p in self.profiles)


def union_profiles(*profiles: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    """The profiles of the union of several channels (element-wise or)."""
    return tuple(np.logical_or.reduce([np.asarray(p[a], bool) for p in profiles]) for a in range(len(profiles[0])))


def permute_profiles(profiles: Sequence[np.ndarray], order: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Profiles of a view whose axis ``i`` is axis ``order[i]`` of the array (the
    ``memory_order`` permutation) -> profiles in the array's own axis order."""
    out: list[np.ndarray] = [np.empty(0, bool)] * len(order)
    for i, a in enumerate(order):
        out[int(a)] = profiles[i]
    return tuple(out)


def box_from_profiles(profiles: Sequence[np.ndarray]) -> Box | None:
    """The tight box of the occupied planes, or None when nothing is occupied."""
    box = []
    for p in profiles:
        idx = np.flatnonzero(p)
        if idx.size == 0:
            return None
        box.append((int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def foreground_box(data: np.ndarray) -> Box | None:
    """The bounding box of the voxels nonzero in any channel of ``data`` ``[C, *spatial]``,
    or None when every voxel of every channel is zero."""
    return box_from_profiles(foreground_profiles(data))


def check_has_foreground(box: Box | None, modalities: Sequence[str]) -> Box:
    """``box`` itself; a scan without any nonzero voxel is refused before inference.

    Raises
    ------
    ScanError
        when ``box`` is None (every channel is zero everywhere).
    """
    if box is None:
        raise ScanError(f"the scan is entirely background: every voxel of {', '.join(modalities)} is zero; "
                        "check that the right files were given and that they are not blank")
    return box


# -- growth --------------------------------------------------------------------------------
def margin_voxels(margin_mm: float, spacing: Sequence[float]) -> tuple[int, ...]:
    """A margin in millimetres as whole voxels per axis (rounded up), for anisotropic spacing."""
    return tuple(int(math.ceil(margin_mm / s - 1e-9)) if margin_mm > 0 else 0 for s in spacing)


def grow_box(box: Box, margin: Sequence[int], shape: Sequence[int]) -> Box:
    """``box`` widened by ``margin`` voxels on both sides of each axis, clipped to ``shape``."""
    return tuple((max(0, a - m), min(int(n), b + m)) for (a, b), m, n in zip(box, margin, shape, strict=False))


def _aligned_size(size: int, minimum: int, multiple: int) -> int:
    target = max(size, minimum, 1)
    return -(-target // multiple) * multiple


def align_box(box: Box, shape: Sequence[int], divisible_by: int = 1,
              minimum: Sequence[int] | None = None) -> tuple[Box, list[tuple[int, int]]]:
    """Grow ``box`` so each side is at least ``minimum`` and a multiple of ``divisible_by``.

    The growth is split evenly around the box and shifted to stay inside ``shape``. Where
    the volume itself is too small the box is the whole axis and the rest is padding.

    Returns
    -------
    box : the grown box, inside ``shape``
    padding : per axis ``(before, after)`` zeros to add to the cropped array so that its
        size is the aligned one (all zero unless the volume is smaller than that)
    """
    minimum = tuple(minimum) if minimum is not None else (1,) * len(box)
    out, padding = [], []
    for (a, b), n, lo in zip(box, shape, minimum, strict=False):
        want = _aligned_size(b - a, int(lo), int(divisible_by))
        if want >= n:
            out.append((0, int(n)))
            total = want - int(n)
            padding.append((total // 2, total - total // 2))
            continue
        start = a - (want - (b - a)) // 2
        start = min(max(start, 0), int(n) - want)
        out.append((start, start + want))
        padding.append((0, 0))
    return tuple(out), padding


# -- other grids ---------------------------------------------------------------------------
def oriented_box(box: Box, transform: np.ndarray, shape: Sequence[int]) -> Box:
    """``box`` on an input grid of ``shape`` -> the same voxels' box after
    :func:`edge_infer.prepare.apply_orientation` with ``transform`` (nibabel's
    ``[[output axis, flip], ...]``, from :func:`edge_infer.prepare.orientation_transform`)."""
    out: list[tuple[int, int]] = [(0, 0)] * len(box)
    for (a, b), n, (axis, flip) in zip(box, shape, np.asarray(transform), strict=False):
        out[int(axis)] = (int(n) - b, int(n) - a) if flip == -1 else (a, b)
    return tuple(out)


def oriented_profiles(profiles: Sequence[np.ndarray], transform: np.ndarray) -> tuple[np.ndarray, ...]:
    """Occupancy profiles after :func:`edge_infer.prepare.apply_orientation` with ``transform``
    (each profile moved to its output axis, reversed where that axis is flipped)."""
    out: list[np.ndarray] = [np.empty(0, bool)] * len(profiles)
    for p, (axis, flip) in zip(profiles, np.asarray(transform), strict=False):
        out[int(axis)] = p[::-1].copy() if flip == -1 else p
    return tuple(out)


def resampled_profiles(profiles: Sequence[np.ndarray], spacing: Sequence[float], target: Sequence[float],
                       new_shape: Sequence[int]) -> tuple[np.ndarray, ...]:
    """Occupancy profiles on the grid :func:`edge_infer.prepare.resample_linear` makes
    (``new_shape`` voxels at ``target`` mm): a plane is occupied when either plane it
    interpolates from is, so an unoccupied plane is exactly zero there too."""
    from .prepare import source_coordinates  # lazily: the manifest reads crop rules without nibabel

    out = []
    for p, s_in, s_out, n_out in zip(profiles, spacing, target, new_shape, strict=False):
        n_in = len(p)
        c = np.clip(source_coordinates(int(n_out), n_in, float(s_in), float(s_out)), 0, n_in - 1)
        lo = np.floor(c).astype(np.intp)
        out.append(p[lo] | p[np.minimum(lo + 1, n_in - 1)])
    return tuple(out)


def resampled_box(box: Box, shape: Sequence[int], spacing: Sequence[float], target: Sequence[float],
                  new_shape: Sequence[int]) -> Box:
    """The box on the resampled grid (see :func:`resampled_profiles`) holding every output
    voxel that interpolates from ``box`` on a grid of ``shape``."""
    profiles = []
    for (a, b), n in zip(box, shape, strict=False):
        p = np.zeros(int(n), bool)
        p[a:b] = True
        profiles.append(p)
    grown = box_from_profiles(resampled_profiles(profiles, spacing, target, new_shape))
    return grown if grown is not None else tuple((0, int(n)) for n in new_shape)


def box_slices(box: Box) -> tuple[slice, ...]:
    """``box`` as slices for indexing the last ``len(box)`` axes (prefix with ``...``)."""
    return tuple(slice(a, b) for a, b in box)


def box_voxels(box: Box) -> int:
    """Voxels inside ``box``."""
    return int(np.prod([b - a for a, b in box], dtype=np.int64))


def place_in_full(cropped: np.ndarray, box: Box, shape: Sequence[int], background: Any = 0) -> np.ndarray:
    """The inverse of cropping: ``cropped`` (its last axes the size of ``box``) written into
    a new array of the full spatial ``shape`` (leading axes kept), ``background`` elsewhere."""
    lead = cropped.shape[: cropped.ndim - len(box)]
    sizes = tuple(b - a for a, b in box)
    if cropped.shape[len(lead):] != sizes:
        raise ValueError(f"cropped array {cropped.shape[len(lead):]} does not match its box {sizes}")
    out = np.full((*lead, *(int(n) for n in shape)), background, dtype=cropped.dtype)
    out[(slice(None),) * len(lead) + box_slices(box)] = cropped
    return out


# -- the manifest's crop rule ----------------------------------------------------------------
@dataclass(frozen=True)
class CropRule:
    """What counts as background and how much context is kept around the anatomy.

    ``mode`` "nonzero": crop to the voxels nonzero in any channel, widened by ``margin_mm``;
    "none": run the full field of view.
    """

    mode: str = "none"
    margin_mm: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "margin_mm": self.margin_mm}


def parse_crop_rule(mapping: Mapping[str, Any] | None, path_prefix: str = "input.crop") -> CropRule:
    """A :class:`CropRule` from the manifest's ``crop`` object (None: no cropping).

    Raises
    ------
    ModelError
        naming the field by its dotted path (e.g. ``input.crop.margin_mm``).
    """
    if mapping is None:
        return CropRule()
    parent, _, key = path_prefix.rpartition(".")

    def fail(msg: str) -> ModelError:
        return ModelError(f"manifest {msg}")

    typed_field({key: mapping}, key, parent, dict, fail)
    mode = typed_field(mapping, "mode", path_prefix, str, fail)
    if mode not in CROP_MODES:
        raise fail(f"field '{path_prefix}.mode' must be one of {', '.join(CROP_MODES)}, got {short_repr(mode)}")
    margin = typed_field(mapping, "margin_mm", path_prefix, float, fail, 0.0)
    if not math.isfinite(margin) or margin < 0:
        raise fail(f"field '{path_prefix}.margin_mm' must be a finite number >= 0, got {short_repr(margin)}")
    unknown = sorted(set(mapping) - {"mode", "margin_mm"})
    if unknown:
        raise fail(f"field '{path_prefix}.{unknown[0]}' is not a crop setting (mode, margin_mm)")
    return CropRule(mode, float(margin))
