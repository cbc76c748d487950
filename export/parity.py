"""Parity of imported models: every artifact of a model folder, run through the runtime as a
device runs it, against a reference (eager PyTorch, or the fp32 artifact of the same backend).

Masks are made by the runtime's own finishing (:func:`edge_infer.finish.regions_from_logits`),
so sigmoid thresholds and softmax argmax are compared as the device applies them. Reported per
artifact: Dice per output channel, the largest probability and logit differences, and the
reference's voxel count per channel (Dice of empty masks says nothing).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from edge_infer.finish import regions_from_logits
from edge_infer.manifest import Manifest

from .errors import ParityError
from .losses import dice

#: minimum Dice per channel against the reference (issue 13)
TOLERANCE = {"fp32": 0.99, "fp16": 0.99, "int8": 0.98}

Runner = Callable[[np.ndarray], np.ndarray]


def probabilities(logits: np.ndarray, activation: str) -> np.ndarray:
    """Sigmoid or softmax (over axis 1) of ``[N, K, ...]`` logits, in float64."""
    x = logits.astype(np.float64)
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def channel_masks(logits: np.ndarray, m: Manifest) -> np.ndarray:
    """Boolean ``[N, K, ...]`` masks of a batch of logits, as the runtime makes them."""
    return np.stack([regions_from_logits(y, m.threshold, m.activation) for y in logits])


def compare(logits: np.ndarray, ref: np.ndarray, m: Manifest) -> dict:
    """Dice per channel, largest probability / logit difference, reference voxels per channel."""
    a, b = channel_masks(logits, m), channel_masks(ref, m)
    return {"dice": {c: dice(a[:, k], b[:, k]) for k, c in enumerate(m.channels)},
            "max_prob_diff": float(np.abs(probabilities(logits, m.activation) - probabilities(ref, m.activation)).max()),
            "max_abs_logit_diff": float(np.abs(logits.astype(np.float64) - ref).max()),
            "reference_voxels": {c: int(b[:, k].sum()) for k, c in enumerate(m.channels)}}


def runtime_runner(folder: Path, backend: str, precision: str, threads: int = 1) -> Runner:
    """The runtime's ``backend.run`` for one artifact (sha256 and tensor specs checked), fed
    channels-first batches whatever the manifest's layout."""
    from edge_infer.model import load_model

    loaded = load_model(folder, backend=backend, precision=precision, threads=threads)
    last = not loaded.manifest.layout.startswith("NC")

    def run(x: np.ndarray) -> np.ndarray:
        if not last:
            return loaded.backend.run(np.ascontiguousarray(x, np.float32))
        y = loaded.backend.run(np.ascontiguousarray(np.moveaxis(x, 1, -1), np.float32))
        return np.moveaxis(y, -1, 1)
    return run


def check_parity(folder: Path, m: Manifest, inputs: np.ndarray, reference: Runner | None = None,
                 reference_name: str = "pytorch") -> dict:
    """Compare every artifact of ``folder`` with ``reference`` (None: the fp32 artifact of
    the same backend, which then only proves it runs) on ``inputs`` (``[N, C, *spatial]``); raises :class:`ParityError` past
    :data:`TOLERANCE`, else returns the report stored in the manifest's provenance."""
    ref_logits = None if reference is None else reference(inputs)
    fp32: dict[str, np.ndarray] = {}
    results = {}
    for art in sorted(m.artifacts, key=lambda a: a.precision != "fp32"):
        logits = runtime_runner(folder, art.backend, art.precision)(inputs)
        if art.precision == "fp32":
            fp32[art.backend] = logits
        ref = fp32[art.backend] if ref_logits is None else ref_logits
        row = compare(logits, ref, m)
        row.update(reference=f"{art.backend}/fp32" if ref_logits is None else reference_name,
                   min_dice=TOLERANCE[art.precision], passed=min(row["dice"].values()) >= TOLERANCE[art.precision])
        results[f"{art.backend}/{art.precision}"] = row
    for key, row in results.items():
        if not row["passed"]:
            worst = min(row["dice"].items(), key=lambda kv: kv[1])
            raise ParityError(f"{key} disagrees with {row['reference']}: Dice {worst[1]:.4f} on {worst[0]} < "
                              f"{row['min_dice']} (largest probability difference {row['max_prob_diff']:.3g})")
    return {"inputs": list(inputs.shape), "artifacts": results}
