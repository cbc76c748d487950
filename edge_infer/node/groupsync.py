"""Group commit of folder fsyncs: one fsync of a folder covers every rename made into it before it began.

The spool places each file by writing it under ``tmp/``, fsyncing it, renaming it to its final
name and fsyncing the final folder (:func:`.spool.atomic_write`). With several associations
storing at once, the files' own fsyncs already run concurrently (the kernel commits them in
one journal transaction), but each thread would still fsync the same series folder in turn.
:class:`FolderSync` lets one thread fsync the folder for all who asked before that fsync
began; the others wait for it and return without one of their own.

The guarantee each caller gets is unchanged: :meth:`FolderSync.sync` returns only after an
fsync of the folder that *began after the call* has succeeded, so the caller's rename (made
before the call) is durable. If that fsync fails, every caller it would have covered gets the
error (none retries past a failed fsync, which could report a lost write as clean).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path


class _Folder:
    """The group-commit state of one folder."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.asked = 0          # tickets handed out
        self.done = 0           # every ticket <= done is covered by a successful fsync
        self.failed = 0         # every ticket <= failed (and > done) is covered by a failed one
        self.error: OSError | None = None
        self.running = False
        self.users = 0


class FolderSync:
    """fsync folders on behalf of many threads, one fsync per group of concurrent callers.

    Parameters
    ----------
    fsync
        The function that fsyncs a folder and raises ``OSError`` on failure.
    """

    def __init__(self, fsync: Callable[[Path], None]) -> None:
        self._fsync = fsync
        self._lock = threading.Lock()
        self._folders: dict[Path, _Folder] = {}

    def sync(self, folder: Path) -> None:
        """Return once ``folder`` was fsynced by an fsync that began after this call.

        Raises
        ------
        OSError
            The fsync that covered this call failed.
        """
        state = self._enter(folder)
        try:
            with state.cond:
                state.asked += 1
                ticket = state.asked
                while state.done < ticket:
                    if state.failed >= ticket and state.error is not None:
                        raise state.error
                    if state.running:
                        state.cond.wait()
                    else:
                        self._run(folder, state)
        finally:
            self._leave(folder, state)

    def _run(self, folder: Path, state: _Folder) -> None:
        """fsync ``folder`` for every ticket handed out so far (called holding ``state.cond``)."""
        state.running = True
        covered = state.asked
        state.cond.release()
        error = None
        try:
            self._fsync(folder)
        except OSError as exc:
            error = exc
        finally:
            state.cond.acquire()
            state.running = False
            state.cond.notify_all()
        if error is not None:
            state.failed, state.error = covered, error
        else:
            state.done = max(state.done, covered)

    def _enter(self, folder: Path) -> _Folder:
        with self._lock:
            state = self._folders.setdefault(folder, _Folder())
            state.users += 1
            return state

    def _leave(self, folder: Path, state: _Folder) -> None:
        with self._lock:
            state.users -= 1
            if state.users == 0 and self._folders.get(folder) is state:
                del self._folders[folder]  # nobody waits on it: do not keep one per series forever
