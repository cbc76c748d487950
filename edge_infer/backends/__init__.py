"""Inference backends: one module per runtime behind one interface, picked by name.

Each backend's module is imported only when that backend is loaded, so a device without
LiteRT can run ONNX models and vice versa.
"""

from __future__ import annotations

import importlib
from enum import Enum
from pathlib import Path

from ..errors import InputError
from .base import Backend, TensorSpec


class BackendName(str, Enum):
    ONNX = "onnx"
    TFLITE = "tflite"


#: backend name -> (module, class); the one registry of backends
REGISTRY = {
    BackendName.ONNX.value: (".onnx", "OnnxBackend"),
    BackendName.TFLITE.value: (".tflite", "TFLiteBackend"),
}


def backend_class(name: str):
    """The class of backend ``name``; an unknown name lists the known ones."""
    try:
        module, cls = REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown backend {name!r}; known backends: {', '.join(REGISTRY)}") from None
    return getattr(importlib.import_module(module, __name__), cls)


def load_backend(name: str, path: str | Path, threads: int = 0, **options) -> Backend:
    """Load the model file ``path`` with backend ``name`` (``onnx`` or ``tflite``)."""
    return backend_class(name)(Path(path), threads=threads, **options)


__all__ = ["Backend", "BackendName", "TensorSpec", "REGISTRY", "backend_class", "load_backend"]
