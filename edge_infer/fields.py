"""Typed field access for the validators of JSON and TOML documents (manifests, profiles)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

MISSING = ...

_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list", dict: "an object", type(None): "null"}


def kind_name(kind: type | tuple[type, ...]) -> str:
    """``int`` -> "an integer", ``(list, type(None))`` -> "a list or null"."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)


def short_repr(val: Any, limit: int = 120) -> str:
    """``repr`` of a value cut to one short line (a hostile document may hold huge values)."""
    text = repr(val)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def typed_field(d: object, key: str, where: str, kind: type | tuple[type, ...],
                fail: Callable[[str], Exception], default: Any = MISSING) -> Any:
    """Field ``key`` of the object ``d`` at dotted path ``where``, checked to be of ``kind``.

    ``d`` is a decoded document's value of any type: anything but a dict is refused.

    An int is accepted (and converted) where a float is wanted; a bool is never an int.
    ``fail(message)`` builds the exception raised, so each document type keeps its own error
    class and prefix; ``default`` (if given) is returned for a missing field.
    """
    path = f"{where}.{key}" if where else key
    if not isinstance(d, dict):
        raise fail(f"field {where!r} must be an object")
    if key not in d:
        if default is MISSING:
            raise fail(f"missing field {path!r}")
        return default
    val = d[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if float in kinds and isinstance(val, int) and not isinstance(val, bool):
        try:
            val = float(val)
        except OverflowError:
            raise fail(f"field {path!r} is a number too large for a float") from None
    if (isinstance(val, bool) and bool not in kinds) or not isinstance(val, kinds):
        raise fail(f"field {path!r} must be {kind_name(kind)}, got {short_repr(val)}")
    return val
