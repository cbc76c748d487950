"""The model zoo: one registry of architectures, each taking ``in_channels``/``out_channels``.

>>> from export.zoo import create_model, list_models
>>> model = create_model("flat_unet2d", in_channels=4, out_channels=3, features=16, depth=4)
>>> model.info.divisible_by
16
"""

from __future__ import annotations

from . import mobilenetv3, segnet, unet  # noqa: F401  (registers the architectures)
from ._registry import ModelInfo, create_model, list_models, model_constructor, register_model
from .segnet import exportable_unpool

__all__ = ["ModelInfo", "create_model", "list_models", "model_constructor", "register_model", "exportable_unpool"]
