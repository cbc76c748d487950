"""The export stage of edge-infer: model zoo, phantom data, training, compression, export.

Runs on a workstation with torch (``pip install 'edge-infer[export]'``). Importing this
package does not import torch: :mod:`export.phantoms` works with numpy and nibabel alone, and
the torch-based modules (``export.zoo``, ``export.train``, ``export.onnx_export`` ...) are
imported only when used. ``export.package(module, out, spec)`` packages a model trained
elsewhere (:mod:`export.byom`); the importers of other formats are in :mod:`export.sources`
and :mod:`export.import_onnx`. The runtime (``edge_infer``) never imports this package.
"""

from __future__ import annotations

import importlib

__all__ = ["phantoms", "zoo", "data", "train", "prune", "exporters", "verify", "cli", "package"]


def __getattr__(name: str):
    if name == "package":  # bring your own model: export.package(module, out, spec, ...)
        return importlib.import_module(".byom", __name__).package
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
