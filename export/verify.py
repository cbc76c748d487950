"""Parity: PyTorch against every exported artifact, run through the runtime as a device runs it.

For each artifact in a model folder, :func:`edge_infer.model.load_model` loads it (sha256 and
tensor specs checked) and its ``backend.run`` produces logits for held-out cases, slice by
slice (2D) or whole padded volume (3D). Reported per artifact: max abs logit difference and
the Dice of thresholded masks against the reference: PyTorch for fp32 artifacts, the fp32
artifact of the same backend for fp16 / int8. Past tolerance, :class:`ParityError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from torch import nn

from .data import REGIONS, Case
from .errors import ParityError
from .losses import dice
from .train import evaluate, predict_logits, sigmoid, torch_runner

#: minimum Dice of thresholded masks against the reference
TOLERANCE = {"fp32": 0.999, "fp16": 0.99, "int8": 0.99}


def _masks(logits: Sequence[np.ndarray], thr: Sequence[float]) -> list[np.ndarray]:
    t = np.asarray(thr, np.float32)[:, None, None, None]
    return [sigmoid(lg) > t for lg in logits]


def _agreement(a: list[np.ndarray], b: list[np.ndarray]) -> dict[str, float]:
    """Dice per region between two mask sets, pooled over all cases."""
    return {r: dice(np.concatenate([x[i].ravel() for x in a]), np.concatenate([y[i].ravel() for y in b]))
            for i, r in enumerate(REGIONS)}


def verify_folder(folder: str | Path, model: nn.Module, cases: Sequence[Case], threads: int = 2,
                  tolerance: dict[str, float] | None = None, raise_on_fail: bool = True) -> dict:
    """Compare every artifact in ``folder`` with ``model`` on ``cases``; returns a report dict.

    The report holds, per artifact ``backend/precision``: ``max_abs_logit_diff``,
    ``dice_vs_reference`` (per region), ``reference``, ``dice_vs_truth`` (per region, the
    artifact's own accuracy on the cases), ``passed``.
    """
    from edge_infer.manifest import load_manifest
    from edge_infer.model import load_model

    tol = {**TOLERANCE, **(tolerance or {})}
    manifest = load_manifest(folder)
    dims, div, tile = manifest.dims, manifest.divisible_by, manifest.tile
    thr = manifest.threshold
    ref_logits = [predict_logits(torch_runner(model), c.image, dims, div, tile=tile) for c in cases]
    results: dict[str, dict] = {}
    logits_by: dict[tuple[str, str], list[np.ndarray]] = {}
    for art in sorted(manifest.artifacts, key=lambda a: a.precision != "fp32"):
        loaded = load_model(folder, backend=art.backend, precision=art.precision, threads=threads)
        logits = [predict_logits(loaded.backend.run, c.image, dims, div, tile=tile) for c in cases]
        logits_by[(art.backend, art.precision)] = logits
        if art.precision == "fp32":
            ref, ref_name = ref_logits, "pytorch"
        else:
            ref, ref_name = logits_by.get((art.backend, "fp32"), ref_logits), f"{art.backend}/fp32"
        agree = _agreement(_masks(logits, thr), _masks(ref, thr))
        diff = max(float(np.abs(a - b).max()) for a, b in zip(logits, ref))
        truth = evaluate([sigmoid(lg) for lg in logits], cases, thr)
        ok = min(agree.values()) >= tol[art.precision]
        results[f"{art.backend}/{art.precision}"] = {
            "reference": ref_name, "max_abs_logit_diff": diff, "dice_vs_reference": agree,
            "min_dice_tolerance": tol[art.precision], "dice_vs_truth": truth, "passed": bool(ok)}
    report = {"cases": [c.case_id for c in cases], "threshold": list(thr),
              "pytorch_dice_vs_truth": evaluate([sigmoid(lg) for lg in ref_logits], cases, thr),
              "artifacts": results}
    failed = [k for k, v in results.items() if not v["passed"]]
    if failed and raise_on_fail:
        k = failed[0]
        worst = min(results[k]["dice_vs_reference"].items(), key=lambda kv: kv[1])
        raise ParityError(f"{k} disagrees with {results[k]['reference']}: Dice {worst[1]:.4f} on {worst[0]} "
                          f"< {results[k]['min_dice_tolerance']} (max abs logit diff {results[k]['max_abs_logit_diff']:.3g})")
    return report


def format_report(report: dict) -> str:
    """A few human-readable lines of a :func:`verify_folder` report."""
    lines = [f"cases: {', '.join(report['cases'])}; threshold {report['threshold']}",
             "pytorch Dice vs truth: " + " ".join(f"{r} {v:.4f}" for r, v in report["pytorch_dice_vs_truth"].items())]
    for k, v in report["artifacts"].items():
        agree = " ".join(f"{r} {d:.4f}" for r, d in v["dice_vs_reference"].items())
        truth = " ".join(f"{r} {d:.4f}" for r, d in v["dice_vs_truth"].items())
        lines.append(f"{k:12s} {'PASS' if v['passed'] else 'FAIL'} vs {v['reference']}: max|dlogit| "
                     f"{v['max_abs_logit_diff']:.2e}, Dice {agree} (>= {v['min_dice_tolerance']}); vs truth {truth}")
    return "\n".join(lines)
