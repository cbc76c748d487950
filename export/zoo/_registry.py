"""The one registry of model architectures: ``@register_model`` name -> constructor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import UnknownModelError

_MODELS: dict[str, Callable[..., Any]] = {}


@dataclass(frozen=True)
class ModelInfo:
    """Metadata that travels with a model instance (``model.info``).

    Attributes
    ----------
    arch : registry name of the architecture
    dims : 2 (slices, NCHW) or 3 (patches, NCDHW)
    divisible_by : spatial sizes the network accepts must be multiples of this
    default_tile : training / export sample size (H, W) or (D, H, W)
    dynamic_spatial : True when any spatial size divisible by ``divisible_by`` works
    config : constructor keyword arguments that rebuild the same architecture
    """

    arch: str
    dims: int
    divisible_by: int
    default_tile: tuple[int, ...]
    dynamic_spatial: bool
    config: dict


def register_model(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Register a model constructor under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Registered architecture names, sorted."""
    return sorted(_MODELS)


def model_constructor(name: str) -> Callable[..., Any]:
    """The constructor registered as ``name``; an unknown name lists the valid ones."""
    try:
        return _MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; valid names: {', '.join(list_models())}"
        ) from None


def create_model(name: str, in_channels: int = 4, out_channels: int = 3, **kwargs: Any):
    """Build architecture ``name`` with ``in_channels`` inputs and ``out_channels`` logits.

    Extra keyword arguments (``features``, ``depth``, ``width`` ...) go to the constructor;
    the instance's ``info.config`` records all of them so a checkpoint can rebuild it.
    """
    return model_constructor(name)(in_channels=in_channels, out_channels=out_channels, **kwargs)
