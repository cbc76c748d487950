"""The fields schema version 2 added to the manifest's ``input`` object (docs/manifest.md).

``step`` and ``blending`` say how a 3D model's sliding window runs (nnU-Net: step 0.5 of the
tile, Gaussian weights); ``intensity`` holds the fixed per-channel statistics of
``clipped_zscore`` (nnU-Net's CT normalisation). A version 1 manifest has none of them and
reads with the defaults, which are what the runtime did before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import ModelError
from .fields import MISSING, short_repr, typed_field

BLENDINGS = ("gaussian", "constant")
#: sliding-window conventions (``input.windows``): where windows start and the shape of the
#: Gaussian that blends them (:func:`edge_infer.engines.window_starts`)
WINDOW_RULES = ("nnunet", "monai")
DEFAULT_STEP = 0.5


@dataclass(frozen=True)
class Intensity:
    """A channel's fixed intensity statistics: clip to ``[low, high]``, then ``(x - mean) / std``."""

    low: float
    high: float
    mean: float
    std: float


def _get(d: Any, key: str, where: str, kind: Any, default: Any) -> Any:
    return typed_field(d, key, where, kind, lambda msg: ModelError(f"manifest {msg}"), default)


def _fail(where: str, msg: str) -> ModelError:
    return ModelError(f"manifest field '{where}' {msg}")


def parse_schema2_input(inp: dict, normalization: str, n_modalities: int) -> dict[str, Any]:
    """``{"step", "blending", "windows", "intensity"}`` of the ``input`` object, defaults when absent."""
    step = _get(inp, "step", "input", (int, float), DEFAULT_STEP)
    if not (math.isfinite(step) and 0 < step <= 1):
        raise _fail("input.step", f"must be a fraction of the tile in (0, 1] (nnU-Net: 0.5), got {step!r}")
    blending = _get(inp, "blending", "input", str, "gaussian")
    if blending not in BLENDINGS:
        raise _fail("input.blending", f"must be one of {', '.join(BLENDINGS)}, got {blending!r}")
    windows = _get(inp, "windows", "input", str, "nnunet")
    if windows not in WINDOW_RULES:
        raise _fail("input.windows", f"must be one of {', '.join(WINDOW_RULES)} (whose sliding-window "
                                     f"placement and Gaussian), got {short_repr(windows)}")
    raw = _get(inp, "intensity", "input", (list, type(None)), None)
    if normalization == "clipped_zscore" and raw is None:
        raise _fail("input.intensity", "is required by clipped_zscore: one {low, high, mean, std} per modality")
    intensity = () if raw is None else tuple(_intensity(x, f"input.intensity[{i}]") for i, x in enumerate(raw))
    if raw is not None and len(intensity) != n_modalities:
        raise _fail("input.intensity", f"must list one entry per modality ({n_modalities}), got {len(intensity)}")
    return {"step": float(step), "blending": blending, "windows": windows, "intensity": intensity}


def _intensity(x: Any, where: str) -> Intensity:
    vals = {k: _get(x, k, where, float, MISSING) for k in ("low", "high", "mean", "std")}
    if not all(math.isfinite(v) for v in vals.values()):
        raise _fail(where, f"must hold finite numbers, got {short_repr(x)}")
    if vals["low"] > vals["high"] or vals["std"] <= 0:
        raise _fail(where, f"needs low <= high and std > 0, got {short_repr(x)}")
    return Intensity(**vals)
