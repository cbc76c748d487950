"""Finishing: probabilities -> regions -> labels, connected components, volumes.

All functions are pure array functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .manifest import Label


def logit_thresholds(thresholds: Sequence[float]) -> np.ndarray:
    """Sigmoid thresholds as logits: ``sigmoid(x) > t`` exactly when ``x > log(t / (1 - t))``."""
    t = np.asarray(thresholds, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(t <= 0, -np.inf, np.where(t >= 1, np.inf, np.log(t) - np.log1p(-t))).astype(np.float32)


def regions_from_logits(logits: np.ndarray, thresholds: Sequence[float], activation: str) -> np.ndarray:
    """Boolean region masks ``[K, ...]`` from raw logits ``[K, ...]``, without computing the
    activation: sigmoid is monotonic (threshold in logit space) and softmax keeps the argmax."""
    if activation == "sigmoid":
        t = logit_thresholds(thresholds).reshape((-1,) + (1,) * (logits.ndim - 1))
        return logits > t
    if activation == "softmax":
        idx = logits.argmax(axis=0)
        return np.stack([idx == k for k in range(logits.shape[0])])
    raise ValueError(f"unknown activation {activation!r}")


def labels_from_regions(regions: np.ndarray, labels: Sequence[Label], channels: Sequence[str]) -> np.ndarray:
    """Paint labels in order: each label's value goes where its region is set, so later
    (inner) regions override earlier (outer) ones. BraTS: WT->2, TC->1, ET->4."""
    out = np.zeros(regions.shape[1:], dtype=np.uint8)
    index = {c: i for i, c in enumerate(channels)}
    for lb in labels:
        out[regions[index[lb.region]]] = lb.value
    return out


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of a boolean mask (face connectivity: 6 in 3D, 4 in 2D).

    Returns ``(labels, n)`` with labels ``1..n`` ordered by first voxel in C order and 0 for
    background. A vectorised union-find (hooking plus pointer jumping) over the foreground
    voxels only, so the cost follows the foreground size, not the volume.
    """
    mask = np.asarray(mask, dtype=bool)
    flat_idx = np.flatnonzero(mask)
    labels = np.zeros(mask.shape, dtype=np.int32)
    if flat_idx.size == 0:
        return labels, 0
    compact: np.ndarray = np.full(mask.size, -1, dtype=np.int64)
    compact[flat_idx] = np.arange(flat_idx.size)
    compact = compact.reshape(mask.shape)
    us, vs = [], []
    for ax in range(mask.ndim):
        a = [slice(None)] * mask.ndim
        b = [slice(None)] * mask.ndim
        a[ax], b[ax] = slice(None, -1), slice(1, None)
        both = mask[tuple(a)] & mask[tuple(b)]
        us.append(compact[tuple(a)][both])
        vs.append(compact[tuple(b)][both])
    u = np.concatenate(us)
    v = np.concatenate(vs)
    parent = np.arange(flat_idx.size, dtype=np.int64)
    while True:
        pu, pv = parent[u], parent[v]
        differ = pu != pv
        if not differ.any():
            break
        lo = np.minimum(pu[differ], pv[differ])
        hi = np.maximum(pu[differ], pv[differ])
        np.minimum.at(parent, hi, lo)
        while True:  # pointer jumping until every node points at a root
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    roots, comp = np.unique(parent, return_inverse=True)
    labels.reshape(-1)[flat_idx] = comp.astype(np.int32) + 1
    return labels, int(roots.size)


def component_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxel count of components ``1..n`` (index 0 of the result is component 1)."""
    return np.bincount(labels.reshape(-1), minlength=n + 1)[1:]


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a boolean mask (empty stays empty)."""
    labels, n = label_components(mask)
    if n <= 1:
        return mask.astype(bool)
    return labels == (int(np.argmax(component_sizes(labels, n))) + 1)


def remove_small_components(mask: np.ndarray, min_voxels: int) -> np.ndarray:
    """Drop connected components of fewer than ``min_voxels`` voxels."""
    if min_voxels <= 1:
        return mask.astype(bool)
    labels, n = label_components(mask)
    if n == 0:
        return mask.astype(bool)
    keep = np.concatenate([[False], component_sizes(labels, n) >= min_voxels])
    return keep[labels]


def clean_labels(label_map: np.ndarray, *, keep_largest: bool = False, min_voxels: int = 0) -> np.ndarray:
    """Apply component filters to the foreground (all labels together) of a label map."""
    if not keep_largest and min_voxels <= 1:
        return label_map
    fg = label_map > 0
    keep = fg
    if min_voxels > 1:
        keep = remove_small_components(keep, min_voxels)
    if keep_largest:
        keep = keep_largest_component(keep)
    out = label_map.copy()
    out[fg & ~keep] = 0
    return out


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    return float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0


def label_volumes_ml(label_map: np.ndarray, spacing: Sequence[float], labels: Sequence[Label]) -> dict[str, float]:
    """Volume in mL of every label, and of each label's region as painted (cumulative).

    Keys are label names; ``voxel volume x count``, rounded to 0.001 mL.
    """
    vml = voxel_volume_ml(spacing)  # a count per label: no int64 copy of the map, as bincount makes
    return {lb.name: round(float(np.count_nonzero(label_map == lb.value)) * vml, 3) for lb in labels}
