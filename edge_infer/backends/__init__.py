"""Inference backends: one module per runtime behind one interface, picked by name.

Each backend's module is imported only when that backend is loaded, so a device without
LiteRT can run ONNX models and vice versa.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from ..errors import InputError
from ..vocab import BackendName
from .base import Backend, TensorSpec

#: backend name -> (module, class); the one registry of backends
REGISTRY = {
    BackendName.ONNX.value: (".onnx", "OnnxBackend"),
    BackendName.TFLITE.value: (".tflite", "TFLiteBackend"),
}


#: backend name -> the import names of the runtimes that provide it
RUNTIME_MODULES = {
    BackendName.ONNX.value: ("onnxruntime",),
    BackendName.TFLITE.value: ("ai_edge_litert", "tflite_runtime"),
}


def installed_backends() -> list[str]:
    """Backends whose runtime can be imported here (found without importing it)."""
    import importlib.util

    return [name for name, mods in RUNTIME_MODULES.items() if any(importlib.util.find_spec(m) for m in mods)]


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


__all__ = ["Backend", "BackendName", "TensorSpec", "REGISTRY", "backend_class", "installed_backends", "load_backend"]
