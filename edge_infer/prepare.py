"""Preparation as pure array functions: orientation, resampling, normalisation, padding.

Every forward step has an exact inverse for masks, so the mask returned to the writer lies
on the input's own grid: orientation is a permutation and flips (exact), resampling back to
the input grid is nearest neighbour, and padding is cropped.

Arrays are channels-first ``[C, I, J, K]``; the functions act on the last three axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from nibabel.orientations import axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from .manifest_v2 import Intensity
from .moments import METHODS, Moments, moments_of, scale_for, slabs
from .triples import int_triple, triple

#: relative spacing difference under which no resampling is done
SPACING_RTOL = 0.01


# -- orientation ---------------------------------------------------------------------------
def orientation_transform(affine: np.ndarray, target: str) -> np.ndarray:
    """The nibabel orientation transform (``[[axis, flip], ...]``) from ``affine``'s voxel
    axes to the axis code ``target`` (e.g. ``"RAS"``), for the closest canonical axes."""
    return ornt_transform(io_orientation(affine), axcodes2ornt(tuple(target)))


def apply_orientation(arr: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Flip and permute the last three axes of ``arr`` by a nibabel orientation transform.

    Returns a view. Row ``i`` of ``transform`` says input axis ``i`` becomes output axis
    ``transform[i, 0]``, flipped when ``transform[i, 1] == -1``.
    """
    lead = arr.ndim - 3
    out = arr
    for i, (_, flip) in enumerate(transform):
        if flip == -1:
            out = np.flip(out, axis=lead + i)
    order = np.argsort(transform[:, 0].astype(int))
    return out.transpose(*range(lead), *(lead + order))


def invert_transform(transform: np.ndarray) -> np.ndarray:
    """The transform that undoes ``transform``."""
    inv = np.zeros_like(transform)
    for i, (axis, flip) in enumerate(transform):
        inv[int(axis)] = (i, flip)
    return inv


def reoriented_affine(affine: np.ndarray, transform: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """The affine of the array :func:`apply_orientation` returns for an input of ``shape``."""
    return affine @ inv_ornt_aff(transform, shape)


# -- resampling ----------------------------------------------------------------------------
def resampled_shape(shape: tuple[int, ...], spacing: tuple[float, ...], target: tuple[float, ...]) -> tuple[int, ...]:
    """Grid size covering the same extent at the target spacing."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target, strict=False))


def needs_resampling(spacing: tuple[float, ...], target: tuple[float, ...], rtol: float = SPACING_RTOL) -> bool:
    return any(abs(s - t) > rtol * t for s, t in zip(spacing, target, strict=False))


def source_coordinates(n_out: int, n_in: int, s_in: float, s_out: float) -> np.ndarray:
    """Input-grid coordinates of output voxel centres, both grids centred on one extent."""
    ratio = s_out / s_in
    offset = ((n_in - 1) - (n_out - 1) * ratio) / 2.0
    return np.arange(n_out, dtype=np.float64) * ratio + offset


def _linear_along(arr: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    n = arr.shape[axis]
    c = np.clip(coords, 0, n - 1)
    lo = np.floor(c).astype(np.intp)
    hi = np.minimum(lo + 1, n - 1)
    w = (c - lo).astype(np.float32)
    shape = [1] * arr.ndim
    shape[axis] = -1
    w = w.reshape(shape)
    a = np.take(arr, lo, axis=axis)
    b = np.take(arr, hi, axis=axis)
    a *= 1 - w
    b *= w
    a += b
    return a


def resample_linear(arr: np.ndarray, spacing: tuple[float, ...], target: tuple[float, ...]) -> np.ndarray:
    """Trilinear resampling of the last three axes from ``spacing`` to ``target`` (separable)."""
    lead = arr.ndim - 3
    out = arr.astype(np.float32, copy=False)
    in_shape = arr.shape[lead:]
    new_shape = resampled_shape(in_shape, spacing, target)
    for ax in range(3):
        if new_shape[ax] == in_shape[ax] and not needs_resampling((spacing[ax],), (target[ax],)):
            continue
        coords = source_coordinates(new_shape[ax], in_shape[ax], spacing[ax], target[ax])
        out = _linear_along(out, lead + ax, coords)
    return out


def resample_nearest_to(arr: np.ndarray, shape: tuple[int, ...], spacing: tuple[float, ...],
                        target: tuple[float, ...]) -> np.ndarray:
    """Nearest-neighbour resampling of ``arr`` (last three axes, at ``spacing``) onto the grid
    of ``shape`` voxels at ``target`` spacing; the inverse of :func:`resample_linear` for masks."""
    lead = arr.ndim - 3
    out = arr
    for ax in range(3):
        n_in = arr.shape[lead + ax]
        coords = source_coordinates(shape[ax], n_in, spacing[ax], target[ax])
        idx = np.clip(np.rint(coords), 0, n_in - 1).astype(np.intp)
        if n_in != shape[ax] or not np.array_equal(idx, np.arange(n_in)):
            out = np.take(out, idx, axis=lead + ax)
    return out


def resampled_affine(affine: np.ndarray, shape: tuple[int, ...], spacing: tuple[float, ...],
                     target: tuple[float, ...]) -> np.ndarray:
    """Affine of the grid :func:`resample_linear` produces."""
    new_shape = resampled_shape(shape, spacing, target)
    scale = np.eye(4)
    for ax in range(3):
        ratio = target[ax] / spacing[ax]
        scale[ax, ax] = ratio
        scale[ax, 3] = ((shape[ax] - 1) - (new_shape[ax] - 1) * ratio) / 2.0
    return affine @ scale


# -- normalisation -------------------------------------------------------------------------
def normalize(data: np.ndarray, method: str, channel_axis: int = 0) -> np.ndarray:
    """Normalise each channel of ``data`` (along ``channel_axis``) in place and return it.

    ``zscore_nonzero``: mean and std over nonzero voxels, zero voxels stay zero (the BraTS
    convention, skull-stripped background). ``zscore``: over all voxels. ``minmax``: to [0, 1].
    (:mod:`edge_infer.moments` computes the statistics.)
    """
    if method not in METHODS:
        raise ValueError(f"unknown normalization {method!r}")
    if method == "none":
        return data
    channels = np.moveaxis(data, channel_axis, 0)
    for c in range(channels.shape[0]):
        ch = channels[c]
        offset, scale, keep_zero = scale_for(moments_of(ch), method)
        zero = (ch == 0) if keep_zero else None
        ch -= np.float32(offset)
        ch *= np.float32(scale)
        if zero is not None:
            np.copyto(ch, 0.0, where=zero)
    return data


def normalises_first(m) -> bool:
    """Whether a run of the manifest ``m`` normalises the scan into a float32 copy before
    :func:`prepare` (statistics that are not the whole scan's): ``clipped_zscore``, or
    ``zscore`` over the crop box of a model that crops to nonzero (nnU-Net's order)."""
    return m.normalization == "clipped_zscore" or (m.normalization == "zscore" and m.crop.mode == "nonzero")


def clipped_zscore(data: np.ndarray, intensity: Sequence[Intensity]) -> np.ndarray:
    """A new float32 ``[C, ...]`` array: each channel clipped to ``[low, high]`` of its
    :class:`~edge_infer.manifest_v2.Intensity`, minus ``mean``, over ``std``.

    nnU-Net v2's ``CTNormalization`` (fixed dataset statistics, not the scan's own). Being
    voxel-wise, it is applied to the scan before :func:`prepare` (with ``none``), which is
    also nnU-Net's order (normalise, then resample).
    """
    if len(intensity) != data.shape[0]:
        raise ValueError(f"clipped_zscore needs one intensity entry per channel ({data.shape[0]}), "
                         f"got {len(intensity)}")
    out = np.empty(data.shape, dtype=np.float32)
    for c, it in enumerate(intensity):
        np.clip(data[c], it.low, it.high, out=out[c])
        out[c] -= np.float32(it.mean)
        out[c] /= np.float32(max(it.std, 1e-8))
    return out


def normalized_copy(data: np.ndarray, method: str, slice_axis: int | None = None,
                    moments: Sequence[Moments] | None = None) -> np.ndarray:
    """A new float32 array of ``data`` (``[C, I, J, K]``, any view) normalised per channel.

    With ``slice_axis`` the result is slice-major ``[S, C, H, W]`` (the 2D engine's layout),
    else ``[C, I, J, K]`` C-contiguous. The same values as copying then :func:`normalize`, with
    one read for the statistics (none when ``moments`` of ``data``'s channels are given) and
    one for the copy, slab by slab: no full-size temporaries.
    """
    if method not in METHODS:
        raise ValueError(f"unknown normalization {method!r}")
    lead = 0 if slice_axis is None else slice_axis
    src = np.moveaxis(data, 1 + lead, 1)                 # [C, S, H, W] view
    c, s_n = src.shape[0], src.shape[1]
    if slice_axis is None:
        out = np.empty(data.shape, dtype=np.float32)
        dst = out                                        # [C, I, J, K]
    else:
        out = np.empty((s_n, c, *src.shape[2:]), dtype=np.float32)
        dst = np.moveaxis(out, 1, 0)                     # [C, S, H, W] view of the slice-major array
    ranges = slabs(s_n, int(np.prod(src.shape[2:])))
    for ch, how in enumerate(channel_scales(src, method, moments)):
        for sl in ranges:  # (a thread per channel was slower on the 2-core machine: memory-bound)
            copy_normalized(src[ch, sl], dst[ch, sl], how)
    return out


def channel_scales(src: np.ndarray, method: str, moments: Sequence[Moments] | None = None
                   ) -> tuple[tuple[float, float, bool], ...]:
    """``(offset, scale, keep_zero)`` per channel of ``src`` (channels first), from ``moments``
    when given, else from one read of each channel."""
    if method not in METHODS:
        raise ValueError(f"unknown normalization {method!r}")
    if method == "none":
        return ((0.0, 1.0, False),) * src.shape[0]
    return tuple(scale_for(moments[c] if moments is not None else moments_of(src[c]), method)
                 for c in range(src.shape[0]))


def copy_normalized(x: np.ndarray, y: np.ndarray, how: tuple[float, float, bool]) -> None:
    """``y[...] = (x - offset) * scale`` in float32, zeros of ``x`` kept at zero when asked:
    the one arithmetic every normalised copy uses, so all give the same bytes."""
    offset, scale, keep_zero = how
    y[...] = x                                           # the layout change, then in cache
    zero = (y == 0) if keep_zero else None
    if offset != 0.0:
        y -= np.float32(offset)
    if scale != 1.0:
        y *= np.float32(scale)
    if zero is not None:
        np.copyto(y, 0.0, where=zero)


class SliceSource:
    """The slices of a scan, prepared only as the 2D engine asks for them.

    Holds a ``[C, S, H, W]`` view of the scan in the model's orientation and each channel's
    ``(offset, scale, keep_zero)``; ``source[s:e]`` copies those slices into a reused,
    zero-padded ``[B, C, H', W']`` buffer and normalises them there with
    :func:`copy_normalized`, so the values equal a full prepared copy's, byte for byte. No
    prepared volume exists: the run holds the scan and one batch.
    """

    def __init__(self, view: np.ndarray, scales: Sequence[tuple[float, float, bool]],
                 widths: Sequence[tuple[int, int]] = ((0, 0), (0, 0))) -> None:
        self.view, self.scales = view, tuple(scales)
        self.widths = tuple((before, after) for before, after in widths)
        self._buf: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        c, s, h, w = self.view.shape
        (h0, h1), (w0, w1) = self.widths
        return (s, c, h + h0 + h1, w + w0 + w1)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32)

    def fork(self) -> SliceSource:
        """The same slices with a batch buffer of their own (one per worker thread)."""
        return SliceSource(self.view, self.scales, self.widths)

    def padded(self, widths: Sequence[tuple[int, int]]) -> SliceSource:
        """The same slices with the plane zero-padded by ``widths`` (``[(before, after)] * 2``)."""
        return SliceSource(self.view, self.scales, widths)

    def cropped(self, plane: Sequence[tuple[int, int]]) -> SliceSource:
        """The same slices cut in-plane to ``plane`` (``[(start, stop)] * 2`` on the padded
        plane): a view of the scan's voxels inside it, padding for the rest."""
        rows, widths = [], []
        for (a, b), (before, _), n in zip(plane, self.widths, self.view.shape[2:], strict=False):
            lo, hi = min(max(a - before, 0), n), min(max(b - before, 0), n)
            rows.append(slice(lo, max(hi, lo)))
            pre = min(max(before - a, 0), b - a)
            widths.append((pre, (b - a) - pre - (max(hi, lo) - lo)))
        return SliceSource(self.view[:, :, rows[0], rows[1]], self.scales, widths)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop, step = sl.indices(len(self))
        if step != 1:
            raise IndexError("SliceSource takes contiguous ranges of slices")
        n = max(stop - start, 0)
        if self._buf is None or self._buf.shape[0] < n:
            self._buf = np.zeros((n, *self.shape[1:]), dtype=np.float32)
        x = self._buf[:n]
        (h0, _), (w0, _) = self.widths
        h, w = self.view.shape[2:]
        for c, how in enumerate(self.scales):
            copy_normalized(self.view[c, start:stop], x[:, c, h0:h0 + h, w0:w0 + w], how)
        return x


# -- padding -------------------------------------------------------------------------------
def pad_widths(shape: Sequence[int], minimum: Sequence[int], multiple: Sequence[int]) -> list[tuple[int, int]]:
    """Per-axis (before, after) padding so each axis is at least ``minimum`` and a multiple of
    ``multiple``; split evenly, the odd voxel after."""
    widths = []
    for n, lo, m in zip(shape, minimum, multiple, strict=False):
        target = max(n, lo)
        target = -(-target // m) * m
        total = target - n
        widths.append((total // 2, total - total // 2))
    return widths


def pad(data: np.ndarray, widths: list[tuple[int, int]]) -> np.ndarray:
    """Zero-pad the last ``len(widths)`` axes (returns ``data`` itself when nothing to pad)."""
    if not any(b or a for b, a in widths):
        return data
    lead = data.ndim - len(widths)
    return np.pad(data, [(0, 0)] * lead + list(widths))


def crop(data: np.ndarray, widths: list[tuple[int, int]]) -> np.ndarray:
    """Undo :func:`pad` (a view)."""
    lead = data.ndim - len(widths)
    sl = tuple(slice(b, data.shape[lead + i] - a) for i, (b, a) in enumerate(widths))
    return data[(slice(None),) * lead + sl]


# -- the whole forward step, and its inverse for masks ----------------------------------------
@dataclass(frozen=True)
class Prepared:
    """A prepared volume and everything needed to bring a mask back to the input grid."""

    data: np.ndarray | SliceSource | None  # float32, oriented, resampled, normalised: [C, I, J, K],
                                      # or slice-major [S, C, H, W] when ``slice_axis`` is set
                                      # (a SliceSource of the scan itself when prepared lazily)
    affine: np.ndarray                # affine of the prepared grid (before padding)
    transform: np.ndarray             # orientation transform applied
    input_shape: tuple[int, int, int]
    oriented_shape: tuple[int, int, int]
    oriented_spacing: tuple[float, float, float]
    target_spacing: tuple[float, float, float]
    resampled: bool
    grid_shape: tuple[int, int, int] = (0, 0, 0)   # the prepared grid, [I, J, K] order
    slice_axis: int | None = None


def prepare(data: np.ndarray, affine: np.ndarray, orientation: str,
            spacing: tuple[float, float, float], normalization: str, slice_axis: int | None = None,
            moments: Sequence[Moments] | None = None, lazy: bool = False) -> Prepared:
    """Reorient to ``orientation``, resample to ``spacing``, normalise; returns a new array.

    With ``slice_axis`` the result is slice-major ``[S, C, H, W]`` (slices along that axis
    of the prepared grid), made in the same single copy, for the 2D engine. ``moments`` of
    ``data``'s channels (from the reader) spare a pass when no resampling changes the values.
    """
    from .scan import voxel_spacing

    input_shape = int_triple(data.shape[1:])
    tf = orientation_transform(affine, orientation)
    oriented = apply_orientation(data, tf)
    o_aff = reoriented_affine(affine, tf, input_shape)
    o_shape = int_triple(oriented.shape[1:])
    o_spacing = voxel_spacing(o_aff)
    resample = needs_resampling(o_spacing, spacing)
    if resample:
        out = resample_linear(oriented, o_spacing, spacing)
        aff = resampled_affine(o_aff, o_shape, o_spacing, spacing)
    else:
        out, aff = oriented, o_aff
    grid = int_triple(out.shape[1:])
    if lazy and slice_axis is not None and not resample:
        view = np.moveaxis(out, 1 + slice_axis, 1)      # [C, S, H, W] view of the scan
        source = SliceSource(view, channel_scales(view, normalization, moments))
        return Prepared(source, aff, tf, input_shape, o_shape, o_spacing, triple(spacing), resample, grid, slice_axis)
    if slice_axis is None and resample and out.flags.c_contiguous and not np.shares_memory(out, data):
        normalize(out, normalization)                    # already a fresh copy: in place
    else:
        out = normalized_copy(out, normalization, slice_axis, None if resample else moments)
    return Prepared(out, aff, tf, input_shape, o_shape, o_spacing, triple(spacing), resample, grid, slice_axis)


def restore_mask(mask: np.ndarray, prep: Prepared) -> np.ndarray:
    """Bring a mask (last three axes on the prepared grid) back to the input grid exactly."""
    out = mask
    if prep.resampled:
        out = resample_nearest_to(out, prep.oriented_shape, prep.target_spacing, prep.oriented_spacing)
    out = apply_orientation(out, invert_transform(prep.transform))
    # a contiguous view stays as it is (a 2D run's labels are already in NIfTI's Fortran order)
    return out if out.flags.c_contiguous or out.flags.f_contiguous else np.ascontiguousarray(out)
