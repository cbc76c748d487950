"""``edge-infer profile model.onnx`` / ``model.tflite``: a bare model file, as
``onnxruntime_perf_test`` and TFLite's ``benchmark_model`` take one.

The input is synthetic, shaped from the model's own input tensor (a free batch dimension
is 1, any other free dimension :data:`FREE_SIZE`); the result has the same fields as a model
folder's profile (load time, first inference, latency percentiles, the operator table) but no
volume stage and no board verdict: those need the manifest (modalities, spacing, tile, MACs). A file listed in a
``model.json`` beside it is profiled as that model folder's variant instead.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .errors import InputError
from .manifest import MANIFEST_NAME, load_manifest

#: file suffix -> backend that runs it
BARE_SUFFIXES = {".onnx": "onnx", ".tflite": "tflite"}
#: input tensor dtype -> the precision word the profile table shows
DTYPE_PRECISION = {"float32": "fp32", "float16": "fp16", "int8": "int8", "uint8": "int8"}
#: the size given to a free (named or -1) input dimension other than the batch: a common
#: tile edge that a UNet's poolings divide
FREE_SIZE = 128


def bare_backend(path: Path) -> str | None:
    """The backend of a bare model file (by its suffix), or None for a folder or manifest;
    any other file is refused in one line."""
    if not path.is_file() or path.suffix.lower() == ".json":
        return None
    if path.suffix.lower() not in BARE_SUFFIXES:
        raise InputError(f"{path.name} is not a model: give a model folder, its {MANIFEST_NAME}, "
                         f"or a {' or '.join(BARE_SUFFIXES)} file")
    return BARE_SUFFIXES[path.suffix.lower()]


def manifest_beside(path: Path) -> tuple[Path, str, str] | None:
    """``(model folder, backend, precision)`` when a manifest beside ``path`` lists it."""
    if not (path.parent / MANIFEST_NAME).is_file():
        return None
    m = load_manifest(path.parent)
    for a in m.artifacts:
        if m.artifact_path(a).resolve() == path.resolve():
            return path.parent, a.backend, a.precision
    return None


def synthetic_input(spec) -> np.ndarray:
    """Normal noise (float32; a backend quantises it for an int8 input) of the input tensor's
    shape: a free batch is 1, any other free dimension :data:`FREE_SIZE`."""
    dims = tuple(spec.shape)
    shape = (dims[0] or 1, *(d or FREE_SIZE for d in dims[1:]))
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


def check_bare_options(board=None, scan=(), shape=None, compare=()) -> None:
    """Refuse options that need a manifest, in one line."""
    options = (("--board", board), ("--scan", scan), ("--shape", shape), ("--compare", compare))
    given = [name for name, v in options if v]
    if given:
        verb = "needs" if len(given) == 1 else "need"
        raise InputError(f"{', '.join(given)} {verb} a model folder with its manifest ({MANIFEST_NAME}); "
                         "a bare model file is profiled on its own input shape only")


def profile_file(path: Path, *, runs: int = 50, warmup: int = 5, threads: int = 0) -> dict:
    """Profile a bare ``.onnx``/``.tflite`` file: the result :func:`~edge_infer.profiling.profile`
    returns, without volume stage, estimate or verdict."""
    from .backends import load_backend
    from .invoke_timing import invoke_stats, machine_info

    backend = bare_backend(path)
    if backend is None:
        raise InputError(f"{path.name} is not a {' or '.join(BARE_SUFFIXES)} file; "
                         "profile a model folder with edge_infer.profiling.profile")
    t0 = time.perf_counter()
    be = load_backend(backend, path, threads=threads)
    load_ms = round((time.perf_counter() - t0) * 1e3, 3)
    x = synthetic_input(be.input)
    free = [i for i, d in enumerate(be.input.shape) if d is None and i > 0]
    precision = DTYPE_PRECISION.get(be.input.dtype, be.input.dtype)
    row = {"variant": f"{backend}/{precision}", "backend": backend, "precision": precision, "load_ms": load_ms,
           "runtime": be.describe(), "artifact_bytes": path.stat().st_size}
    row.update(invoke_stats(be, path, x, runs, warmup, threads))
    row["ratio_to_first"] = {"latency_mean": 1.0}
    return {"model": {"name": path.name, "version": "(bare file)", "macs_per_unit": None, "parameters": None},
            "machine": machine_info(),
            "input": {"shape": None, "padded_shape": None, "unit_shape": list(x.shape),
                      "source": "synthetic, from the model's input tensor"
                                + (f"; its free dimensions set to {FREE_SIZE}" if free else "")},
            "runs": runs, "warmup": warmup, "threads": threads, "variants": [row]}
