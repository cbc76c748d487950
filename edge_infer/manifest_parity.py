"""The parity figures an imported model's manifest records in ``provenance.parity`` (docs/manifest.md).

The export stage runs every artifact against the model's source (eager PyTorch,
``nnUNetPredictor``, a MONAI bundle's inferer, or onnxruntime / LiteRT of the original file)
and writes what it measured: the reference, the volume used (its kind and shape only: no
file name, no header field, no patient data), and per artifact Dice per label (or per
output channel), the reference's voxels, the largest probability difference, the tolerance
and whether it passed. :func:`check_provenance` validates that block when a manifest is read;
a manifest without it (a zoo model, schema version 1) reads as before.
"""

from __future__ import annotations

import math
from typing import Any

from .errors import ModelError
from .fields import short_repr, typed_field

#: kinds of parity volume: a seeded phantom, seeded synthetic tiles, the user's scan, the user's tiles
VOLUME_KINDS = ("phantom", "synthetic", "file", "user")
#: the only fields a volume description may hold (nothing that could name a patient)
VOLUME_FIELDS = ("kind", "shape", "seed", "inputs")
UNITS = ("label", "channel")


def _fail(where: str, msg: str) -> ModelError:
    return ModelError(f"manifest field '{where}' {msg}")


def _get(d: Any, key: str, where: str, kind: Any) -> Any:
    return typed_field(d, key, where, kind, lambda msg: ModelError(f"manifest {msg}"))


def check_provenance(prov: dict) -> dict:
    """``prov`` unchanged when its ``parity`` block (if any) is valid; else :class:`ModelError`
    naming the first bad field by its dotted path."""
    if "parity" in prov:
        check_parity_block(prov["parity"], "provenance.parity")
    return prov


def check_parity_block(block: Any, where: str) -> None:
    for key in ("reference", "probability_reference"):
        if not _get(block, key, where, str).strip():
            raise _fail(f"{where}.{key}", "must name what the artifacts were compared with")
    if _get(block, "unit", where, str) not in UNITS:
        raise _fail(f"{where}.unit", f"must be one of {', '.join(UNITS)}, got {short_repr(block['unit'])}")
    if _get(block, "left_out_voxels", where, int) < 0:
        raise _fail(f"{where}.left_out_voxels", "must be >= 0")
    _check_volume(_get(block, "volume", where, dict), f"{where}.volume")
    rows = _get(block, "artifacts", where, dict)
    if not rows:
        raise _fail(f"{where}.artifacts", "must hold one entry per artifact checked")
    for key, row in rows.items():
        _check_row(row, f"{where}.artifacts.{key}")


def _check_volume(vol: dict, where: str) -> None:
    extra = sorted(set(vol) - set(VOLUME_FIELDS))
    if extra:
        raise _fail(f"{where}.{extra[0]}", f"is not allowed (a volume is described by {', '.join(VOLUME_FIELDS)} only)")
    if _get(vol, "kind", where, str) not in VOLUME_KINDS:
        raise _fail(f"{where}.kind", f"must be one of {', '.join(VOLUME_KINDS)}, got {short_repr(vol['kind'])}")
    shape = _get(vol, "shape", where, list)
    if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape):
        raise _fail(f"{where}.shape", f"must be a list of positive integers, got {short_repr(shape)}")


def _check_row(row: Any, where: str) -> None:
    dice = _get(row, "dice", where, dict)
    voxels = _get(row, "reference_voxels", where, dict)
    if not dice or set(dice) != set(voxels):
        raise _fail(f"{where}.dice", "must name the same labels as reference_voxels, at least one")
    for name, d in dice.items():
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d <= 1.0:
            raise _fail(f"{where}.dice.{name}", f"must be a number in [0, 1], got {short_repr(d)}")
        if isinstance(voxels[name], bool) or not isinstance(voxels[name], int) or voxels[name] < 0:
            raise _fail(f"{where}.reference_voxels.{name}", f"must be an integer >= 0, got {short_repr(voxels[name])}")
    diff = _get(row, "max_prob_diff", where, float)
    if not (math.isfinite(diff) and 0.0 <= diff <= 1.0):
        raise _fail(f"{where}.max_prob_diff", f"must be a probability difference in [0, 1], got {short_repr(diff)}")
    if not 0.0 <= _get(row, "min_dice", where, float) <= 1.0:
        raise _fail(f"{where}.min_dice", "must be in [0, 1]")
    _get(row, "passed", where, bool)
