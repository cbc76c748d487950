"""Parse the instances of waiting studies while they wait for their idle time, so the read that
starts a study's job only assembles what is already parsed (issue 16).

The worker thread does it between jobs, one file at a time, and stops as soon as a job is due:
a due job waits at most one file's parse. A study is parsed once it has had no new instance for
:func:`quiet_seconds` (a quarter of the idle time, at most 1 s), so that parsing does not take
the CPU from a study still being received. What is parsed is kept in one
:class:`~edge_infer.dicom.cache.ParseCache` (decoded pixels and headers up to its byte cap)
and dropped when the study's job ends.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from ..dicom.cache import ParseCache
from ..dicom.headers import candidate_files
from ..errors import ScanError
from .arrivals import Arrivals
from .spool import Spool

log = logging.getLogger("edge_infer.node")

#: a study is parsed ahead once quiet for this fraction of the idle time ...
QUIET_FRACTION = 0.25
#: ... or for this many seconds, whichever is shorter
QUIET_MAX_SECONDS = 1.0


def quiet_seconds(idle_seconds: float) -> float:
    """How long a study must have had no new instance before it is parsed ahead."""
    return min(idle_seconds * QUIET_FRACTION, QUIET_MAX_SECONDS)


class Prefetcher:
    """Parses each new instance of the studies waiting in ``arrivals`` once, into ``cache``,
    once the study has had no new instance for ``quiet`` seconds."""

    def __init__(self, spool: Spool, arrivals: Arrivals, quiet: float = 0.0, cache: ParseCache | None = None) -> None:
        self.spool = spool
        self.arrivals = arrivals
        self.quiet = quiet
        self.cache = cache if cache is not None else ParseCache()
        self._stopped: set[str] = set()      # studies whose prefetch hit an internal error

    def folder(self, key: str) -> Path:
        """The folder of a job's input instances (what the job reads)."""
        return self.spool.job_dir(key) / "data"

    def run(self, enough: Callable[[], bool]) -> int:
        """Parse the new files of the waiting studies quiet long enough, oldest first, one at a
        time, until ``enough()`` (asked before each file) or none is left; returns how many
        files were parsed."""
        parsed = 0
        for key in [k for k, _ in self.arrivals.due(self.quiet) if k.startswith("study:") and k not in self._stopped]:
            for path in self._files(key):
                if enough():
                    return parsed
                try:
                    parsed += self.cache.prefetch(path)
                except Exception as exc:  # must not stop the worker: the job's read meets it again and says so
                    log.error("study %s: parsing ahead stopped (%s); it is read when its job runs",
                              key.partition(":")[2], type(exc).__name__)
                    self._stopped.add(key)
                    break
        return parsed

    def _files(self, key: str) -> list[Path]:
        folder = self.folder(key)
        try:
            return list(candidate_files(folder)) if folder.is_dir() else []
        except ScanError:  # the folder cannot be listed: the job's read says so
            return []

    def forget(self, key: str) -> None:
        """Drop what was parsed for ``key`` (its job ended)."""
        self.cache.forget_under(self.folder(key))
        self._stopped.discard(key)
