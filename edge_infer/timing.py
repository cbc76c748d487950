"""Wall time of a run: per named stage (:class:`Timer`) and while a backend call runs (:class:`BusyClock`).

Memory is measured next door, in :mod:`edge_infer.memory`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


class Timer:
    """Wall time per named stage, in seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


class BusyClock:
    """Wall time during which at least one backend call is running (calls may overlap when
    several workers run at once: their union is counted, never their sum)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._active = 0
        self._since = 0.0
        self._lock = threading.Lock()

    def timed(self, fn: Callable[[T], object]) -> Callable[[T], object]:
        def call(x: T) -> object:
            with self._lock:
                if self._active == 0:
                    self._since = time.perf_counter()
                self._active += 1
            try:
                return fn(x)
            finally:
                with self._lock:
                    self._active -= 1
                    if self._active == 0:
                        self.seconds += time.perf_counter() - self._since
        return call
