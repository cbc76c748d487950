"""Send results (DICOM SEG) to the destination node with C-STORE, retrying with backoff.

Each outbox folder with a ``delivery.json`` is pending. A failed send is retried after
``retry_initial`` seconds, doubling up to ``retry_max``, for as long as it takes; the files
stay in the outbox until every instance is stored (status 0x0000 or a warning), then the
folder moves to ``sent/``. The sender runs in its own thread: a destination that is down
never blocks receiving or processing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

from .audit import AuditLog
from .config import Destination, NodeConfig
from .spool import Spool

log = logging.getLogger("edge_infer.node")

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_SEND_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds to wait after ``attempts`` failed tries: initial, 2x, 4x ... capped at maximum."""
    if attempts <= 0:
        return 0.0
    return float(min(maximum, initial * 2.0 ** min(attempts - 1, 60)))


def send_files(files: list[Path], dest: Destination, config: NodeConfig) -> str:
    """C-STORE ``files`` to ``dest`` in one association; returns '' on success, else why not."""
    from pynetdicom import AE

    ae = AE(ae_title=config.ae_title)
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    ae.connection_timeout = min(config.network_timeout, 10.0)
    ae.add_requested_context(SEGMENTATION_STORAGE, list(_SEND_SYNTAXES))
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        return "association " + ("rejected" if assoc.is_rejected else "failed (node down or unreachable)")
    try:
        for path in files:
            try:
                status = assoc.send_c_store(str(path))
            except (ValueError, OSError, RuntimeError) as exc:
                return f"C-STORE of {path.name} failed ({type(exc).__name__}: {exc})"
            code = int(getattr(status, "Status", -1)) if status else -1
            if code != 0 and not (0xB000 <= code <= 0xBFFF):
                return f"C-STORE of {path.name} answered " + (f"0x{code:04X}" if code >= 0 else "nothing")
    finally:
        assoc.release()
    return ""


class Sender:
    """Delivers pending outbox folders until each is stored at the destination."""

    def __init__(self, config: NodeConfig, spool: Spool, audit: AuditLog) -> None:
        self.config = config
        self.spool = spool
        self.audit = audit

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.deliver_due()
            stop.wait(self.config.poll_seconds)

    def deliver_due(self, now: float | None = None) -> int:
        """Try every pending delivery whose time has come; returns how many were delivered."""
        dest = self.config.destination
        delivered = 0
        if dest is None:
            return 0
        for folder, state in self.spool.deliveries():
            if float(state.get("next_try", 0.0)) > (now if now is not None else time.time()):
                continue
            files = sorted(folder.glob("*.dcm"))
            error = send_files(files, dest, self.config) if files else ""
            if error:
                self._retry_later(folder, state, error)
                continue
            self.spool.mark_sent(folder)
            delivered += 1
            self.audit.record("result_sent", job=folder.name, destination=str(dest), outcome="ok",
                              attempts=int(state.get("attempts", 0)) + 1, files=len(files))
            log.info("results of job %s sent to %s", folder.name, dest)
        return delivered

    def _retry_later(self, folder: Path, state: dict[str, Any], error: str) -> None:
        attempts = int(state.get("attempts", 0)) + 1
        wait = backoff(attempts, self.config.retry_initial, self.config.retry_max)
        new = {**state, "attempts": attempts, "next_try": time.time() + wait, "last_error": error}
        self.spool.write(folder / "delivery.json", json.dumps(new, sort_keys=True).encode())
        self.audit.record("send_failed", job=folder.name, destination=str(self.config.destination),
                          outcome="retry", attempts=attempts, error=error)
        log.warning("sending job %s to %s failed (%s); retry %d in %.0f s", folder.name,
                    self.config.destination, error, attempts, wait)
