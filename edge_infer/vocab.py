"""The closed vocabularies of the runtime: backend names and artifact precisions.

Every other module (the backend registry, the manifest, board profiles, the CLI's choices)
takes its names from here. Imports nothing, so a command line can offer them as choices
without loading numpy or a runtime.
"""

from __future__ import annotations

from enum import Enum


class BackendName(str, Enum):
    """An inference runtime an artifact runs on."""

    ONNX = "onnx"
    TFLITE = "tflite"


class Precision(str, Enum):
    """How an artifact stores its weights (and, for int8, computes)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


#: the backend names, in the order boards and the CLI list them
BACKENDS: tuple[str, ...] = tuple(b.value for b in BackendName)
#: the precisions, most precise first
PRECISIONS: tuple[str, ...] = tuple(p.value for p in Precision)
