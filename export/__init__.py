"""The export stage of edge-infer: model zoo, phantom data, training, compression, export.

Runs on a workstation with torch (``pip install 'edge-infer[export]'``). Importing this
package does not import torch: :mod:`export.phantoms` works with numpy and nibabel alone, and
the torch-based modules (``export.zoo``, ``export.train``, ``export.onnx_export`` ...) are
imported only when used. The runtime (``edge_infer``) never imports this package.
"""

from __future__ import annotations

import importlib

__all__ = ["phantoms", "zoo", "data", "train", "prune", "exporters", "verify", "cli"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
