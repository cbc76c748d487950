"""Run a node: the SCP (or a folder watcher), the worker and the sender, until stopped.

The model is loaded once, before anything listens, so a bad model fails at start with one
line; its first load and run happen in a child process (node/probe.py), so a model that
crashes its backend is refused instead of taking the node down. Then unfinished jobs in the spool are queued again, the worker and sender threads
start, and the SCP (``serve``) or the watcher (``watch``) feeds the spool until SIGTERM or
SIGINT.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

from .arrivals import Arrivals
from .audit import AuditLog
from .config import NodeConfig
from .probe import probe_model
from .scp import StoreHandler, start_server
from .sender import Sender
from .spool import Spool
from .watch import Watcher
from .worker import Worker

log = logging.getLogger("edge_infer.node")


class Node:
    """The parts of a running node, wired together."""

    def __init__(self, config: NodeConfig, loaded=None) -> None:
        from ..pipeline import load_for_run

        self.config = config
        self.spool = Spool(config.spool)
        self.spool.clear_tmp()
        self.audit = AuditLog(self.spool.audit_path)
        self.arrivals = Arrivals()
        if loaded is None:
            # first load and run in a child: a model that crashes its backend cannot take the node down
            probe_model(config.model, config.backend, config.threads)
        # 2D models on a CPU: one single-threaded backend call per thread in flight, as `edge-infer run`
        self.loaded, workers = (loaded, 1) if loaded is not None else \
            load_for_run(config.model, backend=config.backend, threads=config.threads)
        self.worker = Worker(config, self.spool, self.audit, self.arrivals, self.loaded, workers)
        self.sender = Sender(config, self.spool, self.audit)
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start_background(self) -> None:
        """Queue unfinished jobs, then start the worker and sender threads."""
        self.worker.recover()
        self.audit.record("node_started", model=self.loaded.manifest.name, model_sha256=self.loaded.artifact.sha256,
                          destination=str(self.config.destination) if self.config.destination else None)
        for name, target in (("worker", self.worker.run_forever), ("sender", self.sender.run_forever)):
            t = threading.Thread(target=target, args=(self.stop,), name=f"edge-infer-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def shutdown(self, timeout: float = 30.0) -> None:
        self.stop.set()
        for t in self._threads:
            t.join(timeout)
        self.audit.record("node_stopped")

    def install_signal_handlers(self) -> None:
        def handler(signum, frame) -> None:
            log.info("signal %d: stopping", signum)
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def serve(config: NodeConfig, ready=None) -> None:
    """Run the DICOM node until SIGTERM/SIGINT. ``ready(node)`` is called once listening."""
    node = Node(config)
    server = start_server(config, StoreHandler(node.spool, node.audit, node.arrivals.mark), node.audit)
    node.install_signal_handlers()
    node.start_background()
    host, port = server.server_address[:2]
    log.info("listening as %s on %s:%d; spool %s; model %s (sha256 %s)", config.ae_title, host, port,
             config.spool, node.loaded.manifest.name, node.loaded.artifact.sha256[:12])
    if ready:
        ready(node)
    try:
        node.stop.wait()
    finally:
        server.shutdown()
        node.shutdown()


def watch(folder: str | Path, config: NodeConfig, ready=None) -> None:
    """Watch ``folder`` until SIGTERM/SIGINT, processing what is dropped into it."""
    node = Node(config)
    watcher = Watcher(folder, node.spool, node.audit, node.arrivals, config.idle_seconds)
    node.install_signal_handlers()
    node.start_background()
    log.info("watching %s; spool %s; model %s (sha256 %s)", folder, config.spool, node.loaded.manifest.name,
             node.loaded.artifact.sha256[:12])
    if ready:
        ready(node)
    try:
        while not node.stop.is_set():
            watcher.scan_once()
            node.stop.wait(config.poll_seconds)
    finally:
        node.shutdown()
