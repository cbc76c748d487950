"""Skip empty units exactly: slices (2D) and windows (3D) whose input is all background.

An empty unit is not assumed to segment as background: the model's own output for it is
computed once (:func:`background_output`) and reused for every other empty unit. That is
exact because every skipped unit gets the same input: background voxels normalise to one
value per channel (:func:`background_values`), and a unit is skipped only when it holds
nothing else, padding included (a window reaching into padding whose value differs from the
background is computed, not skipped).

Emptiness comes from the occupancy profiles of :mod:`edge_infer.crop` (one boolean per plane
along each axis), already known from the read pass: a slice is empty when its plane is not
occupied; a window is empty when, along some axis, none of the planes it covers is occupied.

For the engines (a few lines each)::

    empty = empty_slices(profiles[slice_axis])          # 2D: run only the others
    y0 = background_output(run, volume[empty[0]])       # once, on a real empty slice
    out[empty] = y0                                     # broadcast into the logits

    skip = empty_windows(windows, profiles, padding, uniform_padding)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def background_values(scales: Sequence[tuple[float, float, bool]]) -> np.ndarray:
    """Per channel, the normalised value of a background (zero) voxel.

    Parameters
    ----------
    scales : per channel ``(offset, scale, keep_zero)`` of
        :func:`edge_infer.moments.scale_for` (a channel is ``(x - offset) * scale``, its zeros
        kept at zero when ``keep_zero``)
    """
    return np.array([0.0 if keep else (0.0 - off) * sc for off, sc, keep in scales], dtype=np.float32)


def empty_slices(profile: np.ndarray) -> np.ndarray:
    """Indices of the slices holding no foreground, from the occupancy profile along the
    slice axis (:func:`edge_infer.crop.foreground_profiles`)."""
    return np.flatnonzero(~np.asarray(profile, dtype=bool))


def _window_empty(window: Sequence[slice], profiles: Sequence[np.ndarray],
                  padding: Sequence[tuple[int, int]], uniform_padding: bool) -> bool:
    empty_somewhere = False
    for w, prof, (before, _) in zip(window, profiles, padding, strict=False):
        a, b = w.start - before, w.stop - before          # the window on the unpadded grid
        if (a < 0 or b > len(prof)) and not uniform_padding:
            return False                                  # padding differs from background: compute it
        if not prof[max(a, 0):max(min(b, len(prof)), 0)].any():
            empty_somewhere = True
    return empty_somewhere


def empty_windows(windows: Sequence[Sequence[slice]], profiles: Sequence[np.ndarray],
                  padding: Sequence[tuple[int, int]] | None = None, uniform_padding: bool = True) -> np.ndarray:
    """Which sliding windows see only background.

    Parameters
    ----------
    windows : tuples of slices on the padded grid (:func:`edge_infer.engines.window_slices`)
    profiles : occupancy profiles of the unpadded grid, one per spatial axis
    padding : per axis ``(before, after)`` padding added to the grid (default none)
    uniform_padding : whether the padding value equals the background value of every
        channel (true for ``zscore_nonzero`` and ``none``); if not, a window reaching into
        the padding is never called empty, since its input differs from the others

    Returns
    -------
    bool array, one per window: True where the window can reuse the background output
    """
    padding = padding if padding is not None else [(0, 0)] * len(profiles)
    return np.array([_window_empty(w, profiles, padding, uniform_padding) for w in windows], dtype=bool)


def background_unit(values: np.ndarray, shape: Sequence[int], inner: Sequence[slice] | None = None) -> np.ndarray:
    """An all-background unit ``[C, *shape]``: ``values[c]`` inside ``inner`` (default: all),
    zero outside it (the padding of a slice or a window at the edge)."""
    unit = np.zeros((len(values), *shape), dtype=np.float32)
    region = (slice(None), *(inner if inner is not None else [slice(None)] * len(shape)))
    unit[region] = np.asarray(values, np.float32).reshape(-1, *[1] * len(shape))
    return unit


def background_output(run: Callable[[np.ndarray], np.ndarray], unit: np.ndarray,
                      channels_last: bool = False) -> np.ndarray:
    """The model's output for one all-background unit ``[C, *spatial]``, computed once.

    ``run`` takes a batch (``[B, C, *spatial]``, or channels last when ``channels_last``)
    and returns logits; the result is ``[K, *spatial]`` (channels first), read-only so that
    it can be shared by every skipped unit.
    """
    x = np.ascontiguousarray(np.moveaxis(unit, 0, -1) if channels_last else unit)[None]
    y = np.asarray(run(x))[0]
    y = np.array(np.moveaxis(y, -1, 0) if channels_last else y, dtype=np.float32)
    y.flags.writeable = False
    return y
