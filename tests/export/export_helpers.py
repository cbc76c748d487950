"""Tiny model settings shared by the export-stage tests (imported as ``export_helpers``)."""

from __future__ import annotations

#: tiny constructor arguments per registered architecture (a new model must add one here)
TINY = {
    "unet2d": dict(features=4, depth=2),
    "unet3d": dict(features=2, depth=2),
    "flat_unet2d": dict(features=4, depth=2),
    "flat_unet3d": dict(features=2, depth=2),
    "mobilenetv3_lraspp": dict(width=0.25),
    "mobilenetv3_lraspp_skip": dict(width=0.25),
    "segnet": dict(width=4, stages=3),
}


def tiny_shape(dims: int) -> tuple[int, ...]:
    """(C, *spatial) of a tiny input: 32x32 slices, 16^3 patches."""
    return (4, 32, 32) if dims == 2 else (4, 16, 16, 16)
