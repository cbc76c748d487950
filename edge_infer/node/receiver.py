"""A receiver process: serves the DICOM connections the node hands it (``receivers`` > 1).

pynetdicom decodes every PDU in Python and one process's threads share one interpreter lock,
so one process receives only so many instances a second, whatever the disk (docs/node.md,
"Receive rate"). With ``receivers = N`` the node's own
process listens and serves connections itself, and hands new connections to N - 1 processes
like this one (the socket itself, over a Unix socket: :mod:`.receivers`). Each checks and spools
instances exactly as the node does (:class:`~.scp.StoreHandler`: acknowledged only once on
disk) and tells the node what it stored, so the node's arrival clock, metrics and audit stay
whole. It stops when the node asks (open transfers get what is left of ``stop_timeout``) or
when the node is gone.

Started as ``python -m edge_infer.node.receiver FD`` with its settings pickled on stdin by
the node (a trusted parent, never a peer).
"""

from __future__ import annotations

import json
import logging
import pickle
import signal
import socket
import sys
import threading
import time

from .audit import AuditLog
from .logs import setup_logging
from .scp import StoreHandler, skip_value_validation
from .server import handed_server, stop_associations
from .spool import Spool

log = logging.getLogger("edge_infer.node")


class Channel:
    """The receiver's end of its Unix socket to the node: connections in, events out."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._lock = threading.Lock()

    def send(self, event: str, **fields) -> None:
        """One event to the node (each a datagram); a node that is gone is ignored here and
        noticed by :meth:`receive`."""
        data = json.dumps({"e": event, **fields}).encode("utf-8")
        with self._lock:
            try:
                self.sock.send(data)
            except OSError:
                pass

    def receive(self) -> tuple[dict, socket.socket | None] | None:
        """The next message from the node, with the connection it hands over; None when the node is gone."""
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, 4096, 1)
        except OSError:
            return None
        if not data:
            for fd in fds:
                socket.close(fd)
            return None
        conn = socket.socket(fileno=fds[0]) if fds else None
        return json.loads(data), conn


class EventMetrics:
    """What :class:`~.scp.StoreHandler` and the refusals count, sent to the node's metrics."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def instance(self, kind: str, refused: bool = False) -> None:
        self.channel.send("instance", kind=kind, refused=refused)

    def association_refused(self, reason: str) -> None:
        self.channel.send("association_refused", reason=reason)


def serve_handed(channel: Channel, settings: dict) -> int:
    """Serve what the node hands over until it says stop or is gone; returns how many open
    associations were aborted at the stop."""
    config = settings["config"]
    spool = Spool(config.spool)
    audit = AuditLog(spool.audit_path)
    metrics = EventMetrics(channel)
    handler = StoreHandler(spool, audit, lambda key: channel.send("stored", key=key), config, metrics,
                           kept_aside=lambda study, series, why: channel.send("kept_aside", study=study,
                                                                              series=series, why=why))
    server, start = handed_server(config, handler, audit, metrics, released=lambda: channel.send("released"))
    channel.send("ready")
    deadline = None
    while True:
        message = channel.receive()
        if message is None:  # the node is gone: finish what is open, within stop_timeout
            break
        fields, conn = message
        if conn is not None:
            start(conn, tuple(fields["address"]))
        elif fields.get("e") == "stop":
            deadline = time.monotonic() + float(fields["seconds"])
            break
    aborted = stop_associations(server, deadline or time.monotonic() + config.stop_timeout, audit)
    channel.send("stopped", aborted=aborted)
    return aborted


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node decides when its receivers stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = pickle.loads(sys.stdin.buffer.read())
    setup_logging(settings["log_level"], settings["pynetdicom_level"], settings["pynetdicom_log_handlers"])
    skip_value_validation()
    channel = Channel(socket.socket(fileno=int(argv[0])))
    serve_handed(channel, settings)
    return 0


if __name__ == "__main__":  # pragma: no cover - run as a child process by the node
    sys.exit(main())
