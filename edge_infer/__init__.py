"""edge-infer: a slim on-device runtime for brain MRI segmentation models.

The runtime never imports torch or the export stage; optional backends import lazily, and so
does this public API (``import edge_infer`` loads nothing heavy)::

    import edge_infer as ei

    model = ei.load_model("default")                       # verified by sha256
    scan = ei.read_scan(["BraTS20_001/"], model.manifest.modalities)
    seg = ei.segment(scan, model, ei.FinishOptions(keep_largest=True))
    print(seg.volumes_ml)                                  # labels on the scan's own grid

:func:`run_case` does the same from files to files (mask, report, SEG, overlay).
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import TYPE_CHECKING, Any

try:
    __version__ = metadata.version("edge-infer")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0.0.0+unknown"

#: public name -> the module that defines it
_API = {
    "read_scan": "readers", "Scan": "scan",
    "load_model": "model", "LoadedModel": "model",
    "segment": "segmentation", "Segmentation": "segmentation",
    "run_case": "run", "RunResult": "run", "Report": "report",
    "ModelChoice": "options", "ReadOptions": "options", "FinishOptions": "options",
    "OutputSpec": "options", "RunTuning": "options",
    "EdgeInferError": "errors", "InputError": "errors", "ScanError": "errors", "ModelError": "errors",
    "IntegrityError": "errors", "BackendUnavailableError": "errors", "OutputError": "errors",
    "BudgetError": "errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    try:
        module = _API[name]
    except KeyError:
        raise AttributeError(f"module 'edge_infer' has no attribute {name!r}") from None
    return getattr(import_module(f".{module}", __name__), name)


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from .errors import (
        BackendUnavailableError,
        BudgetError,
        EdgeInferError,
        InputError,
        IntegrityError,
        ModelError,
        OutputError,
        ScanError,
    )
    from .model import LoadedModel, load_model
    from .options import FinishOptions, ModelChoice, OutputSpec, ReadOptions, RunTuning
    from .readers import read_scan
    from .report import Report
    from .run import RunResult, run_case
    from .scan import Scan
    from .segmentation import Segmentation, segment
