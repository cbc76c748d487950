"""The standard scan and models every 2D benchmark shares (full or quick sizes)."""

from __future__ import annotations

from pathlib import Path

from edge_infer.vocab import PRECISIONS

from . import data, models
from .common import Context


def shape2d(ctx: Context) -> tuple[int, int, int]:
    return data.QUICK_2D if ctx.quick else data.FULL_2D


def case2d(ctx: Context) -> Path:
    return data.case(ctx.cache, shape2d(ctx))


#: a 40-slice phantom for the in-process comparisons (precision, limit): same plane, fewer slices
SLAB_2D = (240, 240, 40)


def slab_shape(ctx: Context) -> tuple[int, int, int]:
    return data.QUICK_2D if ctx.quick else SLAB_2D


def slab2d(ctx: Context) -> Path:
    return data.case(ctx.cache, slab_shape(ctx))


def spec2d(ctx: Context, backends=("onnx", "tflite"), **kw) -> models.Spec:
    """The default model's architecture, exported at the benchmark scan's in-plane size
    (TFLite graphs have a fixed slice size; an ONNX-only folder is fully dynamic)."""
    if "tflite" in backends:
        kw.setdefault("precisions", PRECISIONS)   # one folder serves every benchmark
    return models.spec_2d(shape2d(ctx)[:2], quick=ctx.quick, backends=tuple(backends), **kw)


def model2d(ctx: Context, backends=("onnx", "tflite"), **kw) -> Path:
    return models.build(spec2d(ctx, backends, **kw), ctx.cache)


def model_note(ctx: Context) -> str:
    arch, cfg, source = models.default_arch()
    steps = spec2d(ctx).train_steps
    trained = f"trained {steps} steps on two phantoms (masks look like tumours; no quality claim)" if steps \
        else "untrained (seeded random weights)"
    return f"2D model: {arch} {cfg}, from {source}; {trained}"
