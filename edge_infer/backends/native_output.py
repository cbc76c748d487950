"""What native runtimes write straight to file descriptor 2, captured so that it never comes
before (or instead of) edge-infer's own one-line messages.

LiteRT prints ``INFO: Created TensorFlow Lite XNNPACK delegate for CPU.`` from C++ on every
successful load; Python's ``warnings`` and ``logging`` cannot catch that, only redirecting
the descriptor can. Chatter is dropped; any other line is a real message: written back to
stderr after a block that succeeded, kept for the error message of a block that failed.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

#: line prefixes of native output that is chatter, not a message for the user
CHATTER = ("INFO: ",)

_LOCK = threading.RLock()  # one redirection of the process-wide descriptor at a time


def is_chatter(line: str, prefixes: Sequence[str] = CHATTER) -> bool:
    """Whether a native stderr ``line`` is chatter (blank, or starts with one of ``prefixes``)."""
    return not line.strip() or line.startswith(tuple(prefixes))


@contextmanager
def native_stderr(kept: list[str] | None = None, prefixes: Sequence[str] = CHATTER) -> Iterator[list[str]]:
    """Send file descriptor 2 to a temporary file while the block runs.

    Afterwards the lines that are not chatter are appended to ``kept`` (yielded; a new list
    when none is given): written back to stderr when the block succeeded, left to the caller
    (to quote in its error) when the block raised.
    """
    kept = [] if kept is None else kept
    try:
        tmp = tempfile.TemporaryFile()
        saved = os.dup(2)
    except OSError:  # no temporary file, or no stderr at all (fd 2 closed): run it as it is
        yield kept
        return
    with _LOCK, tmp:
        sys.stderr.flush()
        os.dup2(tmp.fileno(), 2)
        failed = True
        try:
            yield kept
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            new = [ln for ln in tmp.read().decode("utf-8", "replace").splitlines() if not is_chatter(ln, prefixes)]
            kept.extend(new)
            if new and not failed:
                os.write(2, ("\n".join(new) + "\n").encode())


def first_line(exc: BaseException, kept: Sequence[str]) -> str:
    """The first line of ``exc``'s message, else the first native line kept, else its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else (kept[0].strip() if kept else type(exc).__name__)
