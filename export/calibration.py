"""int8 calibration data from the user's own scans, prepared as the runtime prepares them.

Each path is one scan (a 4D NIfTI file, a case folder of per-modality NIfTI files, or a DICOM
folder) read by the runtime's readers (:func:`edge_infer.readers.read_scan`), then reoriented,
resampled and normalised by :func:`edge_infer.prepare.prepare` with the manifest's fields
(``clipped_zscore`` first, voxel-wise, as the runtime does) and cut into what the network
takes: slices along ``slice_axis`` (2D) or tiles (3D), padded as the runtime pads them
(zeros up to the fixed tile or to ``divisible_by``). Tiles are taken evenly through each scan.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from edge_infer.manifest import Manifest

from .errors import DataError

#: calibration batches taken from each scan (one tile or slice each)
PER_SCAN = 8


def prepared_scan(path: str | os.PathLike, m: Manifest) -> np.ndarray:
    """``[C, I, J, K]``: the scan at ``path`` on the network's grid, normalised as the manifest says."""
    from edge_infer.errors import EdgeInferError
    from edge_infer.prepare import clipped_zscore, prepare
    from edge_infer.readers import read_scan

    try:
        scan = read_scan([path], m.modalities)
    except EdgeInferError as exc:
        raise DataError(f"--calibration {os.fspath(path).rsplit('/', 1)[-1]}: {str(exc).splitlines()[0]}") from None
    data, norm = scan.data, m.normalization
    if norm == "clipped_zscore":
        data, norm = clipped_zscore(data, m.intensity), "none"
    return np.asarray(prepare(data, scan.affine, m.orientation, m.spacing_mm, norm).data, np.float32)


def _padded(arr: np.ndarray, minimum: Sequence[int], multiple: int) -> np.ndarray:
    """Zero-pad the trailing axes of ``arr`` to at least ``minimum`` and a multiple of ``multiple``."""
    from edge_infer.prepare import pad, pad_widths

    return pad(arr, pad_widths(arr.shape[arr.ndim - len(minimum):], minimum, [multiple] * len(minimum)))


def _evenly(items: Sequence, n: int) -> list:
    return [items[i] for i in np.unique(np.linspace(0, len(items) - 1, min(n, len(items))).round().astype(int))]


def network_inputs(volume: np.ndarray, m: Manifest, n: int = PER_SCAN) -> list[np.ndarray]:
    """``n`` batches of one (``[1, C, *tile]``) evenly through a prepared ``[C, I, J, K]`` volume."""
    from edge_infer.engines import window_slices

    if m.dims == 2:
        slices = np.moveaxis(volume, 1 + m.slice_axis, 0)                   # [S, C, H, W]
        slices = slices[int(0.1 * len(slices)):max(int(0.9 * len(slices)), 1)]  # skip the empty ends
        plane = list(m.tile) if m.tile else [1, 1]
        return [_padded(s, plane, m.divisible_by)[None] for s in _evenly(slices, n)]
    padded = _padded(volume, list(m.tile), 1)
    windows = window_slices(padded.shape[1:], m.tile, 1.0 - m.step)
    return [np.ascontiguousarray(padded[(slice(None), *w)])[None] for w in _evenly(windows, n)]


def calibration_inputs(paths: Sequence[str | os.PathLike], m: Manifest, per_scan: int = PER_SCAN) -> list[np.ndarray]:
    """The int8 calibration batches of the scans at ``paths`` (see the module docstring)."""
    batches = [x for p in paths for x in network_inputs(prepared_scan(p, m), m, per_scan)]
    if m.tile is None:   # a dynamic 2D model: one slice size, the largest, so batches stack
        size = np.max([b.shape[2:] for b in batches], axis=0)
        batches = [_padded(b, list(size), 1) for b in batches]
    return batches
