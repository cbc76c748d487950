"""The node's logging, the same in the node's process and its receiver processes."""

from __future__ import annotations

import logging
import sys

#: the node's log lines (the node's process and its receiver processes)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int, pynetdicom_level: int, pynetdicom_lines: bool = False) -> None:
    """Our log at ``level``, pynetdicom's at ``pynetdicom_level``, other libraries' at WARNING,
    on stderr; library warnings about received instances reworded without their values.

    ``pynetdicom_lines``: pynetdicom's per-PDU and per-message lines too (``-v``; request and
    response identifiers stay off, :mod:`.scp`).
    """
    from ..library_messages import guard_library_output
    from . import scp  # noqa: F401  (turns pynetdicom's identifier logging off on import)

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("edge_infer").setLevel(level)
    logging.getLogger("pynetdicom").setLevel(pynetdicom_level)
    guard_library_output()  # a library's warning about a received instance: our words, no values
    if pynetdicom_lines:
        from pynetdicom import _config

        _config.LOG_HANDLER_LEVEL = "standard"
