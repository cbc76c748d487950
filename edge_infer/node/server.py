"""The DICOM listener: pynetdicom's AE and server, what they refuse and why, and a bounded stop.

:func:`start_server` listens (the node's own process); :func:`handed_server` serves connections
another process accepted and handed over (a receiver process, :mod:`.receiver`). Both use the
same AE (:func:`make_ae`), the same event handlers and the same refusals (:class:`Refusals`):
below ``min_free_mb`` of free spool disk a new connection is closed before its association,
and rejected associations, presentation contexts and TLS handshakes each give one log line (no
patient data) and one audit record.
"""

from __future__ import annotations

import copy
import functools
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable

from . import reactor
from .audit import AuditLog
from .classes import class_name, storage_classes
from .config import NodeConfig
from .datasetlimit import DataSetLimit
from .scp import STATUS_OK, TRANSFER_SYNTAXES, StoreHandler, require_pynetdicom

log = logging.getLogger("edge_infer.node")


def make_ae(config: NodeConfig):
    """A pynetdicom AE configured as Verification SCP and Storage SCP for every standard storage class."""
    pn = require_pynetdicom()
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time

    ae = pn.AE(ae_title=config.ae_title)
    ae.maximum_associations = config.max_associations
    ae.maximum_pdu_size = config.max_pdu
    ae.acse_timeout = config.acse_timeout
    ae.dimse_timeout = config.dimse_timeout
    ae.network_timeout = config.network_timeout
    if config.allowed_aes:
        ae.require_calling_aet = list(config.allowed_aes)
    ae.add_supported_context(Verification)
    for uid in storage_classes():
        ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
    return ae


@functools.cache
def _context_class():
    """pynetdicom's PresentationContext, deep-copied in microseconds instead of milliseconds.

    pynetdicom deep-copies the server's supported contexts for every association; with every
    storage class in 10 transfer syntaxes (171 contexts, 1710 UIDs) that took 20-30 ms of CPU
    per association here, about 95% of setting one up. A context holds only UIDs (immutable
    str), ints, bools and lists of UIDs, so a copy whose lists are copied is a deep copy.
    """
    from pynetdicom.presentation import PresentationContext

    class Context(PresentationContext):
        def __deepcopy__(self, memo):
            new = copy.copy(self)
            new.__dict__.update({k: list(v) for k, v in vars(self).items() if isinstance(v, list)})
            return new

    return Context


def quick_copy_contexts(contexts: list) -> list:
    """``contexts`` (pynetdicom PresentationContexts) as ones that deep-copy quickly (same values)."""
    cls = _context_class()
    out = []
    for cx in contexts:
        new = cls.__new__(cls)
        new.__dict__.update(copy.deepcopy(vars(cx)))
        out.append(new)
    return out


def _handlers(handler: StoreHandler, refusals: Refusals, released: Callable[[], object] | None = None) -> list:
    evt = require_pynetdicom().evt
    handlers = [(evt.EVT_C_ECHO, lambda event: STATUS_OK), (evt.EVT_C_STORE, handler),
                (evt.EVT_REJECTED, refusals.association), (evt.EVT_ACCEPTED, refusals.contexts),
                (evt.EVT_CONN_OPEN, refusals.connected), (evt.EVT_CONN_OPEN, refusals.limit_data_sets),
                (evt.EVT_CONN_OPEN, _wait_for_work),
                (evt.EVT_CONN_CLOSE, refusals.unassociated)]
    if released is not None:
        handlers.append((evt.EVT_CONN_CLOSE, lambda event: released()))
    return handlers


def _wait_for_work(event) -> None:
    """An accepted connection's threads wait for data instead of polling every 1 ms (:mod:`.reactor`)."""
    if event.assoc.is_acceptor and not reactor.install(event.assoc):
        log.debug("pynetdicom's polling loops kept for this association (a pynetdicom the waiting loops "
                  "were not checked against)")


def _ssl_context(config: NodeConfig):
    if config.tls_cert is None or config.tls_key is None:  # config gives both or neither
        return None
    from .tls import server_context

    return server_context(config.tls_cert, config.tls_key, config.tls_ca)


def start_server(config: NodeConfig, handler: StoreHandler, audit: AuditLog, metrics=None, receivers=None):
    """Start the SCP in background threads; returns pynetdicom's server (:func:`stop_server` stops it).

    With ``receivers`` (:class:`~.receivers.Receivers`), each accepted connection is served here
    or handed to a receiver process.
    """
    refusals = Refusals(config, audit, metrics)
    ae = make_ae(config)
    ssl_context = _ssl_context(config)
    released = receivers.released_here if receivers is not None else None
    server = ae.start_server((config.bind, config.port), block=False,
                             evt_handlers=_handlers(handler, refusals, released), ssl_context=ssl_context)
    server.contexts = quick_copy_contexts(server.contexts)
    server.verify_request = refusals.connection  # socketserver closes a connection refused here
    if ssl_context is not None:
        server.get_request = server.socket.accept  # the handshake happens off the listener's thread
        server.process_request = refusals.tls_handshake(server.process_request, ssl_context,
                                                        failed=released or (lambda: None))
    if receivers is not None:
        server.process_request = receivers.dispatch(ae)(server.process_request)
    return server


def handed_server(config: NodeConfig, handler: StoreHandler, audit: AuditLog, metrics=None,
                  released: Callable[[], object] = lambda: None):
    """A server that does not listen: ``start(conn, address)`` serves a connection another
    process accepted (and checked for free disk) exactly as :func:`start_server` would.
    ``released()`` is called once per connection when it closes. Returns ``(server, start)``."""
    require_pynetdicom()
    from pynetdicom.transport import ThreadedAssociationServer

    class HandedServer(ThreadedAssociationServer):
        def server_bind(self) -> None:  # the node's process holds the listening socket
            pass

        def server_activate(self) -> None:
            pass

    refusals = Refusals(config, audit, metrics)
    ssl_context = _ssl_context(config)
    server = make_ae(config).make_server((config.bind, config.port), server_class=HandedServer,
                                         evt_handlers=_handlers(handler, refusals, released))
    server.socket.close()  # created by socketserver, never bound
    server.contexts = quick_copy_contexts(server.contexts)
    start = server.process_request
    if ssl_context is not None:
        start = refusals.tls_handshake(start, ssl_context, failed=released)
    return server, start


class Refusals:
    """Say what was refused: one log line (no patient data) and one audit record each."""

    def __init__(self, config: NodeConfig, audit: AuditLog, metrics=None) -> None:
        self.config = config
        self.audit = audit
        self.metrics = metrics
        self._opened: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # association -> connected at

    def _count(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.association_refused(reason)

    def connection(self, request, client_address) -> bool:
        from .health import disk_problem

        problem = disk_problem(self.config.spool, self.config.min_free_mb)
        if problem:
            log.warning("refused a connection from %s: %s; free space, then it is accepted again",
                        client_address[0], problem)
            self.audit.record("association_rejected", reason=problem)
            self._count("low_disk")
        return not problem

    def connected(self, event) -> None:
        """Note when the connection opened (:meth:`unassociated` tells silence from a quick close)."""
        self._opened[event.assoc] = time.monotonic()

    def limit_data_sets(self, event) -> None:
        """Bound what one data set of this connection may hold (:mod:`.datasetlimit`)."""
        sock = event.assoc.dul.socket
        address = event.address[0] if event.address else "?"

        def refused(reason: str) -> None:
            why = f"{reason}; the connection is dropped, nothing of that instance is stored"
            log.warning("connection from %s: %s", address, why)
            self.audit.record("instance_refused", reason=why)
            if self.metrics is not None:
                self.metrics.instance("too_large", refused=True)
            try:  # the peer sees the connection close; pynetdicom's threads for it then end
                sock.socket.shutdown(socket.SHUT_RDWR)
            except (OSError, AttributeError):
                pass

        sock.recv = DataSetLimit(sock.recv, self.config.max_instance_mb << 20, refused)

    def unassociated(self, event) -> None:
        """A connection closed before its A-ASSOCIATE-RQ: end its acceptor now, and say so when
        the node closed it for silence.

        pynetdicom's acceptor waits ``acse_timeout`` for the request even once the connection is
        gone, and counts against ``max_associations`` meanwhile: four TCP connects of a port scan
        kept a real sender out for 30 s. An empty item in the queue it waits on ends that wait
        as its timeout would (the acceptor then stops and closes the socket). A connection the
        peer closed early (a port scan, a TCP health probe) gets no line; one that stayed silent
        for ``acse_timeout`` gets a WARNING and an audit record.
        """
        assoc = event.assoc
        if not assoc.is_acceptor or assoc.is_established or assoc.requestor.primitive is not None:
            return
        assoc.dul.to_user_queue.put(None)
        opened = self._opened.pop(assoc, None)
        timeout = self.config.acse_timeout
        if opened is None or timeout is None or time.monotonic() - opened < timeout - 0.05:
            return
        address = event.address[0] if event.address else "?"
        reason = f"no association request within acse_timeout ({timeout:g} s)"
        log.warning("closed a connection from %s: %s", address, reason)
        self.audit.record("association_rejected", reason=reason)
        self._count("silent")

    def tls_handshake(self, process_request, ssl_context, failed: Callable[[], object] = lambda: None):
        """``server.process_request`` that first does the TLS handshake in its own thread, within
        ``acse_timeout`` (a client that connects and sends nothing holds only that thread), and
        says in one line why a handshake failed (then calls ``failed()``)."""
        import ssl

        def handshake(sock, address) -> None:
            sock.settimeout(self.config.acse_timeout)
            try:
                tls = ssl_context.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                reason = f"TLS handshake failed ({getattr(exc, 'reason', None) or type(exc).__name__})"
                log.warning("refused a connection from %s: %s", address[0], reason)
                self.audit.record("association_rejected", reason=reason)
                self._count("tls")
                failed()
                return
            tls.settimeout(None)
            process_request(tls, address)

        def start(sock, address) -> None:
            threading.Thread(target=handshake, args=(sock, address), name="edge-infer-tls", daemon=True).start()

        return start

    def association(self, event) -> None:
        calling = str(event.assoc.requestor.ae_title).strip()
        allowed = self.config.allowed_aes
        reason = ("calling AE title not allowed (add it to allowed_aes)" if allowed and calling not in allowed
                  else f"more than max_associations ({self.config.max_associations}) at once")
        log.warning("association from AE %r at %s rejected: %s", calling, event.assoc.requestor.address, reason)
        self.audit.record("association_rejected", calling_ae=calling, reason=reason)
        self._count("calling_ae" if allowed and calling not in allowed else "max_associations")

    def contexts(self, event) -> None:
        rejected = sorted({str(cx.abstract_syntax) for cx in event.assoc.rejected_contexts})
        if not rejected:
            return
        calling = str(event.assoc.requestor.ae_title).strip()
        classes = ", ".join(class_name(uid) for uid in rejected)
        reason = f"presentation context(s) rejected, SOP class or transfer syntax not supported: {classes}"
        log.warning("association from AE %r: %s", calling, reason)
        self.audit.record("context_rejected", calling_ae=calling, reason=reason)
        self._count("context")


def stop_associations(server, deadline: float, audit: AuditLog) -> int:
    """Let established associations finish until ``deadline`` (``time.monotonic()``), then abort
    the rest (and connections that never associated); nothing unacknowledged counts as
    received. Returns how many were aborted."""
    while any(a.is_established for a in server.active_associations) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = server.active_associations  # still transferring, or connected without associating
    for assoc in left:
        assoc.abort()
    if left:
        log.warning("stopping: aborted %d open association(s) at the stop timeout", len(left))
        audit.record("transfer_abandoned", reason="open at the stop timeout", files=len(left))
    return len(left)

