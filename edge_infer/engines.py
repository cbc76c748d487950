"""Inference engines: 2D slice-by-slice and N-D sliding window.

Tile geometry (:func:`window_starts`, :func:`window_slices`) and blending weights
(:func:`gaussian_weights`) are pure functions, separate from the loops that call the model.
Both loops write the network's raw logits into one preallocated buffer and batch their calls
to the backend; the 2D loop walks a slice-major volume, so each batch is a view handed to the
backend without a copy. The activation is never computed: thresholds are applied in logit
space (see :func:`edge_infer.finish.regions_from_logits`).
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from .manifest_v2 import WINDOW_RULES

ProgressFn = Callable[[int], None]


# -- 2D slices -----------------------------------------------------------------------------
def batch_ranges(n: int, batch: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in chunks of ``batch``."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    return [(s, min(s + batch, n)) for s in range(0, n, batch)]


def to_slice_major(volume: np.ndarray, axis: int) -> np.ndarray:
    """``[C, I, J, K]`` -> ``[S, C, H, W]`` view with spatial ``axis`` first (slices)."""
    return np.moveaxis(volume, 1 + axis, 0)


def from_slice_major(arr: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`to_slice_major` for ``[S, ...]`` arrays of 2 plane axes (a view):
    ``[S, H, W]`` -> ``[I, J, K]`` and ``[S, K, H, W]`` -> ``[K, I, J, K]``."""
    lead = arr.ndim - 3
    return np.moveaxis(arr, 0, lead + axis)


def runs_of(mask: np.ndarray, value: bool) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the maximal runs of ``value`` in the boolean ``mask``."""
    m = np.concatenate([[False], np.asarray(mask, bool) == value, [False]]).astype(np.int8)
    d = np.flatnonzero(np.diff(m))
    return [(int(a), int(b)) for a, b in zip(d[::2], d[1::2], strict=False)]


def stream_slices(volume, run, consume: Callable[[int, int, np.ndarray], None], *, batch: int = 8,
                  channels_last: bool = False, progress: ProgressFn | None = None,
                  skip: np.ndarray | None = None) -> None:
    """Run a 2D model over every slice of a slice-major volume, handing each batch's logits on.

    Parameters
    ----------
    volume : float32 ``[S, C, H, W]``: an array (each batch a view, no copy) or anything with
        ``shape`` and contiguous ``volume[s:e]`` slicing (a :class:`~edge_infer.prepare.SliceSource`,
        whose ``fork()`` gives each worker its own batch buffer)
    run : the backend's ``run`` (``[B, C, H, W]`` or ``[B, H, W, C]`` -> logits), or a list of
        them, one per worker thread: each worker takes the next batch as soon as it is free
        (in slice order), and they run at the same time (the runtimes release the GIL)
    consume : ``consume(s, e, logits)`` with logits ``[e - s, K, H, W]`` of slices ``s:e``;
        called from the workers' threads, for disjoint ranges
    skip : optional bool per slice: slices whose input is entirely background (issue 15); the
        model runs on one of them only, in an ordinary batch (:class:`BackgroundSlice`), and
        that output is handed on for all of them (read-only, broadcast)
    """
    runs = list(run) if isinstance(run, (list, tuple)) else [run]
    background = BackgroundSlice(skip, consume, volume.shape[0])
    ranges = iter([(s + a, s + b) for s, e in runs_of(background.skip, False) for a, b in batch_ranges(e - s, batch)])
    consume = background.consume
    lock, failed = threading.Lock(), threading.Event()

    def next_range() -> tuple[int, int] | None:
        with lock:                      # each worker takes the next batch when it is free: a worker
            return None if failed.is_set() else next(ranges, None)   # slowed on its core holds up no other

    def work(w: int) -> None:
        src = volume if w == 0 or not hasattr(volume, "fork") else volume.fork()
        try:
            while (r := next_range()) is not None:
                s, e = r
                x = src[s:e]
                if channels_last:
                    x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
                y = runs[w](x)
                consume(s, e, y.transpose(0, 3, 1, 2) if channels_last else y)
                if progress:
                    with lock:
                        progress(e - s)
        except BaseException:
            failed.set()                # the other workers stop at their next batch
            raise

    if len(runs) == 1:
        work(0)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(runs)) as pool:
            for job in [pool.submit(work, w) for w in range(len(runs))]:
                job.result()
    background.hand_on(progress)


class BackgroundSlice:
    """Skipped slices of :func:`stream_slices`: the first of them runs with the others, in an
    ordinary batch (no call of another shape), its logits are kept (``consume`` wrapped), and
    :meth:`hand_on` passes them on for every other skipped slice, read-only and broadcast."""

    def __init__(self, skip, consume: Callable[[int, int, np.ndarray], None], n: int) -> None:
        self.skip = np.zeros(n, bool) if skip is None else np.array(skip, bool)
        sk = self.skip
        # an empty slice next to a computed one: it joins that slice's batch
        beside = np.flatnonzero(sk & (np.r_[False, ~sk[:-1]] | np.r_[~sk[1:], False]))
        empty = beside if beside.size else np.flatnonzero(sk)
        self.first = int(empty[0]) if empty.size else -1
        if empty.size:
            self.skip[self.first] = False               # the background unit runs like any slice
        self._consume = consume
        self.y0: np.ndarray | None = None

    def consume(self, s: int, e: int, y: np.ndarray) -> None:
        if s <= self.first < e:
            y0 = np.array(y[self.first - s], dtype=np.float32)
            y0.flags.writeable = False
            self.y0 = y0
        self._consume(s, e, y)

    def hand_on(self, progress: ProgressFn | None) -> None:
        if self.y0 is None:
            return
        for s, e in runs_of(self.skip, True):
            self._consume(s, e, np.broadcast_to(self.y0, (e - s, *self.y0.shape)))
            if progress:
                progress(e - s)


# -- sliding window ------------------------------------------------------------------------


def window_starts(size: int, tile: int, overlap: float, rule: str = "nnunet") -> list[int]:
    """Start offsets of windows of ``tile`` along an axis of ``size`` with ``overlap`` (0..1).

    ``nnunet``: windows spread evenly from 0 to ``size - tile`` (nnU-Net's rule), so the step
    is at most ``tile * (1 - overlap)``. ``monai``: MONAI's ``dense_patch_slices``, every
    ``int(tile * (1 - overlap))`` from 0 until a window reaches the end, the last moved back to
    end there. The axis must already be padded to at least ``tile``.
    """
    if rule not in WINDOW_RULES:
        raise ValueError(f"unknown window rule {rule!r} ({', '.join(WINDOW_RULES)})")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if size < tile:
        raise ValueError(f"axis of {size} is smaller than the tile {tile}; pad it first")
    if size == tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    if rule == "monai":
        n = next(d for d in range(math.ceil(size / step)) if d * step + tile >= size) + 1
        return sorted({min(d * step, size - tile) for d in range(n)})
    n = math.ceil((size - tile) / step) + 1
    span = size - tile
    return sorted({int(round(i * span / (n - 1))) for i in range(n)})


def window_slices(shape: Sequence[int], tile: Sequence[int], overlap: float,
                  rule: str = "nnunet") -> list[tuple[slice, ...]]:
    """Every window (a tuple of slices) tiling ``shape`` with ``tile`` at ``overlap`` (``rule``:
    :func:`window_starts`)."""
    per_axis = [window_starts(n, t, overlap, rule) for n, t in zip(shape, tile, strict=False)]
    return [tuple(slice(s, s + t) for s, t in zip(starts, tile, strict=False))
            for starts in itertools.product(*per_axis)]


#: nnU-Net's predictor scales its float16 Gaussian to this maximum (``value_scaling_factor``)
NNUNET_WEIGHT_SCALE = 10.0


def gaussian_weights(tile: Sequence[int], sigma_scale: float = 1.0 / 8) -> np.ndarray:
    """Separable Gaussian importance map over a tile (max 1, strictly positive): nnU-Net v2's.

    Centred on voxel ``t // 2`` of each axis with ``sigma = t * sigma_scale`` (nnU-Net uses
    1/8), cut at 4 sigma as ``scipy.ndimage.gaussian_filter`` of a delta is, and the voxels
    so zeroed set to the smallest weight left (``compute_gaussian`` in nnU-Net's
    ``sliding_window_prediction.py``). nnU-Net's predictor holds them in float16, scaled to a
    maximum of 10, where the far tails underflow to that smallest weight; they are rounded the
    same way here (then scaled back to a maximum of 1), so windows are blended with the same
    weights at a volume's borders too.
    """
    w = np.ones((), dtype=np.float64)
    for t in tile:
        sigma = max(t * sigma_scale, 1e-6)
        x = np.arange(t, dtype=np.float64) - t // 2
        g = np.where(np.abs(x) <= int(4.0 * sigma + 0.5), np.exp(-0.5 * (x / sigma) ** 2), 0.0)
        w = np.multiply.outer(w, g)
    w16 = (w * (NNUNET_WEIGHT_SCALE / w.max())).astype(np.float16)     # as nnU-Net's predictor holds them
    w16[w16 == 0] = w16[w16 > 0].min()
    return (w16.astype(np.float32) / NNUNET_WEIGHT_SCALE).astype(np.float32)


def monai_gaussian_weights(tile: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """MONAI's Gaussian importance map (``compute_importance_map``): centred between the middle
    voxels (``(t - 1) / 2``), ``sigma = t * sigma_scale``, not cut, float32, its smallest
    weights raised to ``max(min, 1e-3)``."""
    w = np.ones((), dtype=np.float32)
    for t in tile:
        x = np.arange(t, dtype=np.float32) - np.float32((t - 1) / 2.0)
        w = np.multiply.outer(w, np.exp(x ** 2 / np.float32(-2.0 * (t * sigma_scale) ** 2)))
    return np.maximum(w, max(float(w.min()), 1e-3)).astype(np.float32)


def blend_weights(tile: Sequence[int], blending: str, rule: str = "nnunet") -> np.ndarray:
    """The weights of a window's logits: ``gaussian`` in the shape of ``rule``'s framework,
    else ``constant`` (ones)."""
    if blending != "gaussian":
        return np.ones(tuple(tile), np.float32)
    return monai_gaussian_weights(tile) if rule == "monai" else gaussian_weights(tile)


def _batched(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


@dataclass(frozen=True)
class Windows:
    """Sliding-window geometry: the model's ``tile``, the ``overlap`` of neighbours, tiles per
    backend call, how overlapping logits are weighted (``gaussian`` or ``constant``) and whose
    convention places and weights the windows (``rule``: :data:`edge_infer.manifest_v2.WINDOW_RULES`)."""

    tile: tuple[int, ...]
    overlap: float = 0.5
    batch: int = 1
    blending: str = "gaussian"
    rule: str = "nnunet"


def _all_channels(window: tuple[slice, ...]) -> tuple[slice, ...]:
    """``window`` (spatial slices) across every channel of a ``[C, *spatial]`` array."""
    return (slice(None), *window)


def run_windows(volume: np.ndarray, run: Callable[[np.ndarray], np.ndarray], out: np.ndarray, windows: Windows, *,
                channels_last: bool = False, progress: ProgressFn | None = None,
                skip: np.ndarray | None = None) -> np.ndarray:
    """Sliding-window inference of a model with a fixed ``windows.tile`` over ``volume``.

    ``volume`` is ``[C, *spatial]`` padded to at least ``tile``; ``out`` is ``[K, *spatial]``
    and receives the weighted mean of the windows' logits (as nnU-Net and MONAI blend the
    network's raw outputs). A weight-sum buffer of one channel is the only other buffer the
    size of the volume. ``skip`` (a bool per window of :func:`window_slices`, issue 15) marks
    windows whose input is entirely background: the model runs on the first of them only, and
    its output is blended in for each of them as if the model had run there.
    """
    spatial, tile = volume.shape[1:], windows.tile
    weights = blend_weights(tile, windows.blending, windows.rule)
    norm = np.zeros(spatial, dtype=np.float32)
    out[...] = 0.0
    every = window_slices(spatial, tile, windows.overlap, windows.rule)
    skip = np.zeros(len(every), bool) if skip is None else np.asarray(skip, bool)
    empty = [w for w, s in zip(every, skip, strict=False) if s]
    if empty:
        from .skip import background_output

        y0 = background_output(run, np.array(volume[_all_channels(empty[0])]), channels_last) * weights
        for w in empty:
            out[_all_channels(w)] += y0
            norm[w] += weights
        if progress:
            progress(len(empty))
    for group in _batched([w for w, s in zip(every, skip, strict=False) if not s], max(1, windows.batch)):
        x = np.stack([volume[_all_channels(w)] for w in group])
        if channels_last:
            x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        y = run(x)
        if channels_last:
            y = np.moveaxis(y, -1, 1)
        for w, yi in zip(group, y, strict=False):
            yi *= weights
            out[_all_channels(w)] += yi
            norm[w] += weights
        if progress:
            progress(len(group))
    out /= norm[None]
    return out
