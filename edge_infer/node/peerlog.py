"""pynetdicom's log lines about a peer's malformed PDUs: one line each, no traceback, no flood.

pynetdicom logs a traceback for every PDU it cannot read or decode, and one ERROR line for
every byte of a stream that is not a PDU (each byte is read as an unknown PDU type), so a
client sending junk could fill the log. :func:`quiet_peer_errors` keeps the lines (they say
what the peer did wrong) but drops their tracebacks and keeps only the first "unknown PDU
type" line of each association (pynetdicom reads each association in its own thread).
"""

from __future__ import annotations

import logging
import threading

_UNKNOWN_PDU = "Unknown PDU type received"


class PeerErrorFilter(logging.Filter):
    """Drop tracebacks from pynetdicom's records and repeated unknown-PDU lines of one association."""

    def __init__(self) -> None:
        super().__init__()
        self._thread = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        if str(record.msg).startswith(_UNKNOWN_PDU):
            if getattr(self._thread, "unknown_pdu", False):
                return False
            self._thread.unknown_pdu = True
            record.msg = f"{record.msg} (further bytes of this association that are not PDUs are not logged)"
        return True


def quiet_peer_errors(package: str = "pynetdicom") -> PeerErrorFilter:
    """Install one :class:`PeerErrorFilter` on every logger of ``package`` (a filter on a parent
    logger does not see its children's records); call after importing it. Returns the filter."""
    root = logging.getLogger(package)
    installed = next((f for f in root.filters if isinstance(f, PeerErrorFilter)), None) or PeerErrorFilter()
    names = {package, f"{package}.dul", f"{package}.transport", f"{package}.acse", f"{package}.association"}
    names.update(n for n in logging.root.manager.loggerDict if n.startswith(package + "."))
    for name in sorted(names):
        logger = logging.getLogger(name)
        if installed not in logger.filters:
            logger.addFilter(installed)
    return installed
