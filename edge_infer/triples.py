"""Three values per spatial axis typed as such: a volume's shape or spacing as a 3-tuple."""

from __future__ import annotations

from collections.abc import Iterable
from typing import SupportsInt, TypeVar

T = TypeVar("T")


def triple(values: Iterable[T]) -> tuple[T, T, T]:
    """``values`` (exactly three, e.g. a spacing) as a 3-tuple, unchanged; ValueError for any other count."""
    a, b, c = values
    return a, b, c


def int_triple(values: Iterable[SupportsInt]) -> tuple[int, int, int]:
    """Three sizes (a NumPy shape's spatial part, a list) as Python ints."""
    return triple(int(v) for v in values)
