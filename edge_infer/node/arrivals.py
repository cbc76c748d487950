"""When did each job last receive a file: the in-memory clock that decides completeness."""

from __future__ import annotations

import threading
import time


class Arrivals:
    """Job key -> time of its last arrival; a job is due once it has been idle long enough."""

    def __init__(self, clock=time.monotonic) -> None:
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def mark(self, key: str) -> float:
        """Record an arrival for ``key`` now; returns the time recorded."""
        with self._lock:
            now = self._clock()
            self._last[key] = now
            return now

    def due(self, idle_seconds: float) -> list[tuple[str, float]]:
        """Jobs idle for at least ``idle_seconds``, oldest first, with their last arrival time."""
        with self._lock:
            limit = self._clock() - idle_seconds
            return sorted(((k, t) for k, t in self._last.items() if t <= limit), key=lambda kt: kt[1])

    def until_due(self, idle_seconds: float) -> float | None:
        """Seconds until the oldest job has been idle for ``idle_seconds`` (0 if one already has);
        None if no job is waiting. A later arrival never makes it sooner."""
        with self._lock:
            if not self._last:
                return None
            return max(min(self._last.values()) + idle_seconds - self._clock(), 0.0)

    def done(self, key: str, seen: float) -> bool:
        """Forget ``key`` if nothing arrived after ``seen``; False if it must run again."""
        with self._lock:
            if self._last.get(key, seen) > seen:
                return False
            self._last.pop(key, None)
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._last)
