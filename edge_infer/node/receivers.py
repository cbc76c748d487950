"""Receiver processes: spread the node's DICOM connections over ``receivers`` processes.

The node's own process listens and is receiver 0. Each new connection (once the free-disk
check passed) goes to the receiver with the fewest open connections, the node's own first on
a tie; a receiver process gets the socket itself over a Unix socket (``SCM_RIGHTS``) and
serves it with the same checks and the same spool (:mod:`.receiver`). It reports each
instance it stored (the node marks the study's arrival, as for its own), what it counted for
the metrics, and when a connection closed. ``max_associations`` holds across all receivers.
A receiver process that dies is started again; the connections it held are lost to their
peers, which were never told those instances were stored.
"""

from __future__ import annotations

import json
import logging
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from .config import NodeConfig

log = logging.getLogger("edge_infer.node")

RESTART_DELAY = 1.0  # s before a receiver process that died is started again


class _Child:
    """One receiver process and the node's end of its Unix socket."""

    def __init__(self, index: int, settings: bytes) -> None:
        self.index = index
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.open = 0
        with theirs:
            self.proc = subprocess.Popen([sys.executable, "-m", "edge_infer.node.receiver", str(theirs.fileno())],
                                         stdin=subprocess.PIPE, pass_fds=(theirs.fileno(),))
        try:
            self.proc.stdin.write(settings)  # type: ignore[union-attr]
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:  # it died at once: its reader sees the socket close
            pass

    def hand(self, conn: socket.socket, address) -> bool:
        """Give ``conn`` to the process; False if it could not take it."""
        message = json.dumps({"address": list(address[:2])}).encode("utf-8")
        try:
            socket.send_fds(self.sock, [message], [conn.fileno()])
        except OSError:
            return False
        return True


class Receivers:
    """The node's receiver processes (``count - 1`` of them; the node's own process is the first).

    ``on_stored(key)`` is called for each instance a receiver process stored; ``metrics``
    (optional) gets what they counted; ``kept_aside(study, series, why)`` (optional) each
    instance a receiver process kept aside (the node logs and audits each series once).
    """

    def __init__(self, config: NodeConfig, count: int, on_stored: Callable[[str], object], metrics=None,
                 kept_aside: Callable[[str, str, str], object] | None = None) -> None:
        from pynetdicom import _config

        self.config = config
        self.on_stored = on_stored
        self.metrics = metrics
        self.kept_aside = kept_aside
        self._settings = pickle.dumps({
            "config": config,
            "log_level": logging.getLogger("edge_infer").getEffectiveLevel(),
            "pynetdicom_level": logging.getLogger("pynetdicom").getEffectiveLevel(),
            "pynetdicom_log_handlers": _config.LOG_HANDLER_LEVEL == "standard"})
        self._lock = threading.Lock()
        self._stopping = False
        self.here = 0  # connections the node's own process serves
        self.children = [self._start(i) for i in range(1, max(1, count))]

    def _start(self, index: int) -> _Child:
        child = _Child(index, self._settings)
        threading.Thread(target=self._listen, args=(child,), name=f"edge-infer-receiver-{index}", daemon=True).start()
        return child

    def _listen(self, child: _Child) -> None:
        """Read one receiver's events until its socket closes; start it again if it died."""
        while True:
            try:
                data = child.sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                break
            self._event(child, json.loads(data))
        child.sock.close()
        child.proc.wait()
        with self._lock:
            if self._stopping or child.stopped.is_set():
                return
            log.warning("receiver process %d exited (code %s); starting it again in %.0f s",
                        child.index, child.proc.returncode, RESTART_DELAY)
        time.sleep(RESTART_DELAY)
        with self._lock:
            if not self._stopping:
                self.children[child.index - 1] = self._start(child.index)

    def _event(self, child: _Child, event: dict) -> None:
        kind = event.get("e")
        if kind == "stored":
            self.on_stored(event["key"])
        elif kind == "kept_aside" and self.kept_aside is not None:
            self.kept_aside(event["study"], event["series"], event["why"])
        elif kind == "released":
            with self._lock:
                child.open = max(0, child.open - 1)
        elif kind == "ready":
            child.ready.set()
        elif kind == "stopped":
            child.stopped.set()
        elif self.metrics is not None and kind == "instance":
            self.metrics.instance(event["kind"], refused=bool(event["refused"]))
        elif self.metrics is not None and kind == "association_refused":
            self.metrics.association_refused(event["reason"])

    def released_here(self) -> None:
        """A connection the node's own process served has closed."""
        with self._lock:
            self.here = max(0, self.here - 1)

    def dispatch(self, ae) -> Callable:
        """Wraps ``process_request`` of the server of ``ae`` (see :func:`.server.start_server`):
        serve the connection here, or hand it to a receiver process."""

        def wrap(serve_here):
            def process_request(conn, address) -> None:
                child = self._pick()
                if child is not None and child.hand(conn, address):
                    conn.close()  # the receiver holds its own descriptor now
                    return
                with self._lock:
                    if child is not None:
                        child.open -= 1
                    self.here += 1
                    elsewhere = sum(c.open for c in self.children)
                # the node's own share of max_associations is what the receiver processes leave
                ae.maximum_associations = max(1, self.config.max_associations - elsewhere)
                serve_here(conn, address)

            return process_request

        return wrap

    def _pick(self) -> _Child | None:
        """The ready receiver process with the fewest open connections if it has fewer than the
        node's own process, and all are under ``max_associations`` (else None: served here, or
        refused there); counted as open."""
        with self._lock:
            ready = [c for c in self.children if c.ready.is_set() and c.proc.poll() is None]
            total = self.here + sum(c.open for c in self.children)
            if not ready or total >= self.config.max_associations:
                return None
            child = min(ready, key=lambda c: c.open)
            if child.open >= self.here:
                return None
            child.open += 1
            return child

    def stop(self, seconds: float) -> None:
        """Ask every receiver process to stop (open transfers get ``seconds``), then wait for them."""
        with self._lock:
            self._stopping = True
            children = list(self.children)
        for child in children:
            try:
                child.sock.send(json.dumps({"e": "stop", "seconds": seconds}).encode("utf-8"))
            except OSError:
                pass
        deadline = time.monotonic() + seconds + 5.0
        for child in children:
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("receiver process %d did not stop in time: killed", child.index)
                child.proc.kill()
                child.proc.wait()

    def wait_ready(self, seconds: float) -> bool:
        """True once every receiver process said it is ready, within ``seconds``."""
        deadline = time.monotonic() + seconds
        return all(c.ready.wait(max(0.0, deadline - time.monotonic())) for c in self.children)
