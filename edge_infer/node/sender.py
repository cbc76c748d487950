"""Send results (DICOM SEG) to the destination node with C-STORE, retrying with backoff.

Each outbox folder with a ``delivery.json`` is pending. A failed send is retried after
``retry_initial`` seconds, doubling up to ``retry_max``, for as long as it takes; the files
stay in the outbox until every instance is stored (status 0x0000 or a warning), then the
folder moves to ``sent/``. A permanent refusal (the association rejected permanently, e.g. the
called AE title unknown, or no presentation context accepted) waits ``retry_permanent``
instead and is flagged in metrics and readiness until a send succeeds. At start every pending
delivery is tried at once (the destination may have been corrected). The sender runs in its
own thread: a destination that is down never blocks receiving or processing.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .audit import AuditLog
from .config import Destination, NodeConfig
from .dicomweb import WebDestination, credentials, stow_client, stow_files
from .spool import Spool

log = logging.getLogger("edge_infer.node")

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
_SEND_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")


def backoff(attempts: int, initial: float, maximum: float) -> float:
    """Seconds to wait after ``attempts`` failed tries: initial, 2x, 4x ... capped at maximum."""
    if attempts <= 0:
        return 0.0
    return float(min(maximum, initial * 2.0 ** min(attempts - 1, 60)))


@dataclass(frozen=True)
class SendOutcome:
    """Why a send failed ('' when it did not) and whether retrying soon is pointless."""

    error: str = ""
    permanent: bool = False

    def __bool__(self) -> bool:
        return bool(self.error)


def send_files(files: list[Path], dest: Destination, config: NodeConfig, tls=None) -> SendOutcome:
    """C-STORE ``files`` to ``dest`` in one association; a false outcome on success, else why not.

    ``tls``: an :class:`ssl.SSLContext` (:func:`~edge_infer.node.tls.client_context`) for DICOM TLS.
    """
    from pynetdicom import AE

    ae = AE(ae_title=config.ae_title)
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    ae.connection_timeout = min(config.network_timeout, 10.0)
    ae.add_requested_context(SEGMENTATION_STORAGE, list(_SEND_SYNTAXES))
    tls_args = (tls, dest.host) if tls is not None else None
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=tls_args)
    except (OSError, ValueError) as exc:  # a TLS handshake the destination refused, or we did
        return SendOutcome(f"association failed ({type(exc).__name__}: {exc})")
    if not assoc.is_established:
        return _refusal(assoc)
    try:
        if not assoc.accepted_contexts:
            return SendOutcome("the destination accepted no presentation context for Segmentation Storage", True)
        for path in files:
            try:
                status = assoc.send_c_store(str(path))
            except (ValueError, OSError, RuntimeError) as exc:
                return SendOutcome(f"C-STORE of {path.name} failed ({type(exc).__name__}: {exc})")
            code = int(getattr(status, "Status", -1)) if status else -1
            if code != 0 and not (0xB000 <= code <= 0xBFFF):
                return SendOutcome(f"C-STORE of {path.name} answered " + (f"0x{code:04X}" if code >= 0 else "nothing"))
    finally:
        assoc.release()
    return SendOutcome()


def _refusal(assoc) -> SendOutcome:
    """Why an association was not established; permanent when the A-ASSOCIATE-RJ result says so (1)."""
    if not assoc.is_rejected:
        return SendOutcome("association failed (node down or unreachable)")
    rsp = getattr(assoc.acceptor, "primitive", None)
    result, reason = getattr(rsp, "result", None), getattr(rsp, "diagnostic", None)
    permanent = result == 0x01
    reasons: dict[Any, str] = {0x03: "our calling AE title not recognised: add it at the destination",
            0x07: "called AE title not recognised: check the destination's AE title",
            0x02: "application context not supported", 0x01: "no reason given"}
    what = reasons.get(reason, f"reason {reason}")
    return SendOutcome(f"association rejected {'permanently' if permanent else 'transiently'} ({what})", permanent)


class Sender:
    """Delivers pending outbox folders until each is stored at the destination."""

    def __init__(self, config: NodeConfig, spool: Spool, audit: AuditLog, metrics=None) -> None:
        self.config = config
        self.spool = spool
        self.audit = audit
        self.metrics = metrics
        #: the last permanent refusal ('' when none): shown by /readyz and the metrics
        self.permanent_error = ""
        #: set to deliver at once instead of at the next poll
        self.wake = threading.Event()
        self.tls = self.web = None
        dest = config.destination
        if isinstance(dest, WebDestination):
            self.web = stow_client(dest, credentials(dest), config.network_timeout)
        elif dest is not None and dest.tls:
            from .tls import client_context

            self.tls = client_context(config.tls_cert, config.tls_key, config.tls_ca)

    def run_forever(self, stop: threading.Event) -> None:
        self.deliver_due(now=float("inf"))  # at start: try everything at once (a corrected destination)
        while not stop.is_set():
            self.deliver_due()
            self.wake.wait(self.config.poll_seconds)  # set by the worker when a result is committed
            self.wake.clear()

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
            outcome = self._send(files, dest) if files else SendOutcome()
            if outcome:
                self._retry_later(folder, state, outcome)
                continue
            self._flag("")
            self.spool.mark_sent(folder)
            delivered += 1
            self.audit.record("result_sent", job=folder.name, destination=str(dest), outcome="ok",
                              attempts=int(state.get("attempts", 0)) + 1, files=len(files))
            log.info("results of job %s sent to %s", folder.name, dest)
        return delivered

    def _send(self, files: list[Path], dest) -> SendOutcome:
        if self.web is not None:
            return SendOutcome(*stow_files(files, self.web))
        return send_files(files, dest, self.config, self.tls)

    def _flag(self, error: str) -> None:
        self.permanent_error = error
        if self.metrics is not None:
            self.metrics.permanent.set(1 if error else 0)

    def _retry_later(self, folder: Path, state: dict[str, Any], outcome: SendOutcome) -> None:
        attempts = int(state.get("attempts", 0)) + 1
        if outcome.permanent:
            wait = self.config.retry_permanent
            self._flag(outcome.error)
        else:
            wait = backoff(attempts, self.config.retry_initial, self.config.retry_max)
        new = {**state, "attempts": attempts, "next_try": time.time() + wait, "last_error": outcome.error}
        self.spool.write(folder / "delivery.json", json.dumps(new, sort_keys=True).encode())
        self.audit.record("send_failed", job=folder.name, destination=str(self.config.destination),
                          outcome="permanent" if outcome.permanent else "retry", attempts=attempts, error=outcome.error)
        if self.metrics is not None:
            self.metrics.retries.inc()
        log.warning("sending job %s to %s failed (%s); retry %d in %.0f s%s", folder.name,
                    self.config.destination, outcome.error, attempts, wait,
                    " (permanent refusal: fix the destination, then restart)" if outcome.permanent else "")
