"""Capture what pydicom, highdicom and nibabel print, and say what is useful in our own words.

Libraries quote the values they complain about: highdicom warns 'The string "DOE JOHN" is
unlikely to represent the intended person name', pydicom "Invalid value for VR UI:
'1.2.3...'". Such text must never reach stdout, stderr, logs or reports of a medical device.
:func:`capture_library_messages` records the warnings and log records of those libraries
while a reader or writer runs; :func:`reword` turns each into one line without quoted values
or UIDs. ``warnings.catch_warnings`` is process-wide: run readers and writers of one process
from one thread at a time (the node does).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import PurePath

#: loggers whose records are captured (their children included)
LIBRARY_LOGGERS = ("pydicom", "highdicom", "nibabel")
#: warning categories that are developer chatter, not about the input
_DROPPED = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
#: known messages -> our wording (first match wins)
_KNOWN: tuple[tuple[re.Pattern, str], ...] = (
    (re.compile(r"unlikely to represent the intended person name"),
     ("a person name in the source header is not in DICOM form FAMILY^GIVEN (value withheld); "
      "it is copied unchanged")),
    (re.compile(r"Invalid value for VR (\w+)"), "a header value is not valid for VR {0} (value withheld)"),
    (re.compile(r"value length .* exceeds the maximum length .* VR (\w+)"),
     "a header value is longer than VR {0} allows (value withheld)"),
    (re.compile(r"Encoding an empty image"), "the mask is empty: the SEG holds all its frames, all empty"),
    (re.compile(r"Expected explicit VR, but found implicit VR"),
     "a file declares explicit VR but is encoded with implicit VR; it was read as implicit VR"),
    (re.compile(r"Expected implicit VR, but found explicit VR"),
     "a file declares implicit VR but is encoded with explicit VR; it was read as explicit VR"),
)
_QUOTED = re.compile(r"b?\"[^\"]*\"|b?'[^']*'")
_UID_LIKE = re.compile(r"\d+(?:\.\d+){2,}")
_LONG_NUMBER = re.compile(r"\d{6,}")
_MAX_CHARS = 160


def reword(text: str) -> str:
    """One line of ours for a library message: a known message in our words, else the text
    with quoted values, UID-like and long numbers withheld, shortened to :data:`_MAX_CHARS`."""
    for pattern, words in _KNOWN:
        match = pattern.search(text)
        if match:
            return words.format(*match.groups())
    line = " ".join(text.split())
    line = _QUOTED.sub("(value withheld)", line)
    line = _UID_LIKE.sub("(UID withheld)", line)
    line = _LONG_NUMBER.sub("(number withheld)", line)
    return line if len(line) <= _MAX_CHARS else line[: _MAX_CHARS - 3] + "..."


def summarise(texts: Iterable[str], source: str) -> list[str]:
    """Reworded, de-duplicated lines, each prefixed with ``source`` and counted when repeated."""
    counts: dict[str, int] = {}
    for text in texts:
        line = reword(text)
        counts[line] = counts.get(line, 0) + 1
    return [f"{source}: {line}" + (f" ({n} times)" if n > 1 else "") for line, n in counts.items()]


class _Recorder(logging.Handler):
    """Keeps the text of each record (WARNING and above) instead of emitting it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.texts.append(record.getMessage())
        except (TypeError, ValueError):        # a malformed record: keep that it happened
            self.texts.append(record.msg if isinstance(record.msg, str) else "unprintable message")


def _library_loggers() -> list[logging.Logger]:
    """The loggers of :data:`LIBRARY_LOGGERS`, and their children that have handlers of their
    own (nibabel's ``nibabel.global`` prints to stderr itself)."""
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.handlers and name.split(".")[0] in LIBRARY_LOGGERS \
                and logger not in loggers:
            loggers.append(logger)
    return loggers


@contextmanager
def capture_library_messages(source: str = "reader") -> Iterator[list[str]]:
    """Record library warnings and log records inside the block; print none of them.

    Yields a list that, once the block has ended without an exception, holds the captured
    messages in our words (:func:`summarise`). When the block raises, the captured messages
    are dropped with it: the error is ours and says what to fix.
    """
    recorder = _Recorder()
    saved = []
    for logger in _library_loggers():
        saved.append((logger, logger.handlers, logger.propagate))
        logger.handlers, logger.propagate = [recorder], False
    messages: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        warned = [str(w.message) for w in caught if not issubclass(w.category, _DROPPED)]
        logged = [t for t in recorder.texts if t not in warned]     # pydicom both warns and logs
        messages.extend(summarise(warned + logged, source))
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate


class _Reworded(logging.Filter):
    """Rewrites a library's log record into our words (:func:`reword`) before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except (TypeError, ValueError):
            text = "unprintable message"
        record.msg, record.args = reword(text), None
        return True


_GUARD = _Reworded()


def guard_library_output() -> None:
    """For a long-running process (the node): whatever pydicom, highdicom or nibabel warn or log
    outside :func:`capture_library_messages` (a C-STORE being checked, say) is printed in our
    words, values and UIDs withheld, never as the library wrote it. Idempotent.

    Warnings become one WARNING line of the ``edge_infer.library`` logger; the libraries' own log
    records are reworded in place (a capture still records them, reworded).
    """
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if _GUARD not in logger.filters:
            logger.addFilter(_GUARD)
    if getattr(warnings.showwarning, "_edge_infer_guard", False):
        return
    original = warnings.showwarning
    log = logging.getLogger("edge_infer.library")

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, _DROPPED):
            return
        if set(PurePath(str(filename)).parts) & set(LIBRARY_LOGGERS):
            log.warning("%s", reword(str(message)))
        else:
            original(message, category, filename, lineno, file, line)

    showwarning._edge_infer_guard = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning
