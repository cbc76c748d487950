"""Run a node: the SCP (or a folder watcher), the worker and the sender, until stopped.

:meth:`Node.open` loads the model once, before anything listens, so a bad model fails at
start with one line; its first load and run happen in a child process (node/probe.py), so a
model that crashes its backend is refused instead of taking the node down. Then unfinished
jobs in the spool are queued again and the worker and sender threads start; ``serve`` and
``watch`` share that wiring (:func:`_run_node`) and differ only in what feeds the spool (the
SCP or the folder watcher), until SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

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
    """The parts of a running node, wired together. Build one with :meth:`open`.

    The constructor only wires what it is given; opening the spool (and cleaning it), the
    model probe and the model load happen in :meth:`open`.
    """

    def __init__(self, config: NodeConfig, spool: Spool, loaded, workers: int = 1) -> None:
        self.config = config
        self.spool = spool
        self.audit = AuditLog(spool.audit_path)
        self.arrivals = Arrivals()
        self.loaded = loaded
        self.worker = Worker(config, spool, self.audit, self.arrivals, loaded, workers)
        self.sender = Sender(config, spool, self.audit)
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @classmethod
    @contextmanager
    def open(cls, config: NodeConfig, loaded=None) -> Iterator["Node"]:
        """Open the spool (cleaning a killed run's temporaries), probe and load the model, start
        the worker and sender threads; on leaving, stop them and record the stop.

        Without ``loaded`` the model's first load and run happen in a child process, so a model
        that crashes its backend cannot take the node down; 2D models on a CPU then run one
        single-threaded backend call per thread, as ``edge-infer run`` does.
        """
        spool = Spool(config.spool)
        spool.clear_tmp()
        workers = 1
        if loaded is None:
            from ..options import ModelChoice
            from ..planning import load_for_run

            probe_model(config.model, config.backend, config.threads)
            loaded, workers = load_for_run(ModelChoice(model=config.model, backend=config.backend,
                                                       threads=config.threads or 0))
        node = cls(config, spool, loaded, workers)
        node.start_background()
        try:
            yield node
        finally:
            node.shutdown()

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

    def describe_model(self) -> str:
        return f"model {self.loaded.manifest.name} (sha256 {self.loaded.artifact.sha256[:12]})"


def _run_node(config: NodeConfig, feed: Callable[[Node], Callable[[], None]], ready=None) -> None:
    """Open a node, start its feed (SCP or watcher), then run until SIGTERM/SIGINT.

    ``feed(node)`` starts what fills the spool and returns what to call each poll (the
    watcher's scan) or on stopping (the SCP's shutdown): see :func:`serve` and :func:`watch`.
    """
    with Node.open(config) as node:
        tick, close = feed(node)
        node.install_signal_handlers()
        if ready:
            ready(node)
        try:
            while not node.stop.is_set():
                tick()
                node.stop.wait(config.poll_seconds)
        finally:
            close()


def serve(config: NodeConfig, ready=None) -> None:
    """Run the DICOM node until SIGTERM/SIGINT. ``ready(node)`` is called once listening."""

    def feed(node: Node):
        server = start_server(config, StoreHandler(node.spool, node.audit, node.arrivals.mark), node.audit)
        host, port = server.server_address[:2]
        log.info("listening as %s on %s:%d; spool %s; %s", config.ae_title, host, port, config.spool,
                 node.describe_model())
        return (lambda: None), server.shutdown

    _run_node(config, feed, ready)


def watch(folder: str | Path, config: NodeConfig, ready=None) -> None:
    """Watch ``folder`` until SIGTERM/SIGINT, processing what is dropped into it."""

    def feed(node: Node):
        watcher = Watcher(folder, node.spool, node.audit, node.arrivals, config.idle_seconds)
        log.info("watching %s; spool %s; %s", folder, config.spool, node.describe_model())
        return watcher.scan_once, (lambda: None)

    _run_node(config, feed, ready)
