"""Run a node: the SCP (or a folder watcher), the worker and the sender, until stopped.

:meth:`Node.open` opens the spool and starts the worker and sender threads at once; the model
is probed (its first load and run in a child process, node/probe.py, so a model that crashes
its backend is refused instead of taking the node down) and loaded in a background thread,
so the node listens within about a second; jobs wait until the model is ready (``/readyz``
says so). A model that fails stops the node with one line. ``serve`` and ``watch`` share that
wiring (:func:`_run_node`) and differ only in what feeds the spool (the SCP or the folder
watcher). On SIGTERM or SIGINT the node stops accepting, lets open transfers finish for up to
``stop_timeout`` seconds (then aborts them; nothing unacknowledged is kept), waits for the
running job within the same bound (an abandoned job runs again at restart), then audits the stop.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import EdgeInferError
from .arrivals import Arrivals
from .audit import AuditLog
from .config import NodeConfig
from .health import disk_problem, spool_problem, start_health
from .probe import probe_model
from .scp import StoreHandler, skip_value_validation
from .sender import Sender
from .server import start_server, stop_associations
from .spool import Spool
from .stow import start_stow
from .watch import Watcher
from .worker import Worker

log = logging.getLogger("edge_infer.node")


class Node:
    """The parts of a running node, wired together. Build one with :meth:`open`.

    The constructor only wires what it is given; opening the spool (and cleaning it), the
    model probe and the model load happen in :meth:`open`. ``loaded`` may be None: jobs then
    wait for :meth:`model_ready`.
    """

    def __init__(self, config: NodeConfig, spool: Spool, loaded, workers: int = 1) -> None:
        self.config = config
        self.spool = spool
        self.audit = AuditLog(spool.audit_path)
        self.arrivals = Arrivals()
        self.metrics = _metrics(config, spool, self.arrivals)
        self.loaded = None
        self.worker = Worker(config, spool, self.audit, self.arrivals, None, workers, self.metrics)
        self.sender = Sender(config, spool, self.audit, self.metrics)
        self.worker.on_result = self.sender.wake.set
        self.stop = threading.Event()
        self.listening = threading.Event()
        self.load_error: Exception | None = None
        self._threads: list[threading.Thread] = []
        self._pending_model = (loaded, workers)
        self.stopping_since: float | None = None

    @classmethod
    @contextmanager
    def open(cls, config: NodeConfig, loaded=None) -> Iterator[Node]:
        """Open the spool (cleaning a killed run's temporaries), start the worker and sender
        threads, and probe and load the model in the background (unless ``loaded`` is given);
        on leaving, stop them and record the stop.

        2D models on a CPU then run one single-threaded backend call per thread, as
        ``edge-infer run`` does.
        """
        spool = Spool(config.spool)
        spool.clear_tmp()
        node = cls(config, spool, loaded)
        node.start_background()
        try:
            yield node
        finally:
            node.shutdown(config.stop_timeout)

    def start_background(self) -> None:
        """Queue unfinished jobs, start the worker and sender threads, and make the model ready."""
        self.worker.recover()
        loaded, workers = self._pending_model
        targets = [("worker", self.worker.run_forever), ("sender", self.sender.run_forever)]
        for name, target in targets:
            t = threading.Thread(target=target, args=(self.stop,), name=f"edge-infer-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        if loaded is not None:
            self.model_ready(loaded, workers)
        else:
            threading.Thread(target=self._load, name="edge-infer-model", daemon=True).start()

    def _load(self) -> None:
        from ..options import ModelChoice
        from ..planning import load_for_run

        config = self.config
        try:
            probe_model(config.model, config.backend, config.threads)
            loaded, workers = load_for_run(ModelChoice(model=config.model, backend=config.backend,
                                                       threads=config.threads or 0))
        except EdgeInferError as exc:
            self.load_error = exc
            log.error("the model cannot be used: %s", exc)
            self.stop.set()
            return
        self.model_ready(loaded, workers)

    def model_ready(self, loaded, workers: int = 1) -> None:
        """Hand the loaded model to the worker and record the start."""
        self.worker.workers = workers
        self.loaded = self.worker.loaded = loaded
        if self.metrics is not None:
            self.metrics.model_loaded(loaded.manifest.name, loaded.artifact.sha256)
        self.audit.record("node_started", model=loaded.manifest.name, model_sha256=loaded.artifact.sha256,
                          destination=str(self.config.destination) if self.config.destination else None)
        log.info("%s ready: jobs can run", self.describe_model())

    def readiness(self) -> list[str]:
        """Why the node cannot take and run jobs now (empty when ready)."""
        reasons = [] if self.listening.is_set() else ["not listening yet"]
        if self.loaded is None:
            reasons.append(f"model failed: {self.load_error}" if self.load_error else "model loading and verifying")
        reasons += [r for r in (spool_problem(self.spool.root),
                                disk_problem(self.spool.root, self.config.min_free_mb)) if r]
        if self.sender.permanent_error:
            reasons.append(f"destination refuses permanently: {self.sender.permanent_error}")
        return reasons

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the threads (the running job gets what is left of ``timeout`` seconds counted
        from the stop signal), then audit the stop."""
        self.stop.set()
        deadline = (self.stopping_since or time.monotonic()) + timeout  # one budget from the signal on
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        busy = self.worker.busy.is_set()
        if busy:
            log.warning("stopping with a job still running; it runs again at restart")
        self.audit.record("node_stopped", outcome="job abandoned" if busy else None)

    def install_signal_handlers(self) -> None:
        def handler(signum, frame) -> None:
            log.info("signal %d: stopping (open transfers and the running job get up to %.0f s)", signum,
                     self.config.stop_timeout)
            self.stopping_since = self.stopping_since or time.monotonic()
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def describe_model(self) -> str:
        if self.loaded is None:
            return "model loading"
        return f"model {self.loaded.manifest.name} (sha256 {self.loaded.artifact.sha256[:12]})"


def _metrics(config: NodeConfig, spool: Spool, arrivals: Arrivals):
    """The node's metrics; None when prometheus_client is missing and no health port asks for them."""
    from .metrics import Metrics

    try:
        return Metrics(spool.root, arrivals.__len__)
    except EdgeInferError:
        if config.health_port:
            raise
        return None


def _run_node(config: NodeConfig, feed: Callable[[Node], tuple[Callable[[], None], Callable[[], None]]],
              ready=None) -> None:
    """Open a node, start its feed (SCP or watcher) and health endpoint, then run until
    SIGTERM/SIGINT (or a model that fails to load: its error is raised).

    ``feed(node)`` starts what fills the spool and returns what to call each poll (the
    watcher's scan) and on stopping (the SCP's bounded shutdown): see :func:`serve` and :func:`watch`.
    """
    with Node.open(config) as node:
        tick, close = feed(node)
        node.listening.set()
        health = None
        if config.health_port:
            health = start_health(config.health_bind, config.health_port, node.readiness, node.metrics)
            log.info("health and metrics on http://%s:%d/", config.health_bind, config.health_port)
        node.install_signal_handlers()
        if ready:
            ready(node)
        try:
            while not node.stop.is_set():
                tick()
                node.stop.wait(config.poll_seconds)
        finally:
            close()
            if health is not None:
                health.shutdown()
    if node.load_error is not None:
        raise node.load_error


def _say_ready(receivers) -> None:
    """One line once the receiver processes serve (the node's own serves from the start)."""
    if receivers.wait_ready(60):
        log.info("%d receiver processes ready", len(receivers.children) + 1)
    else:
        log.warning("receiver processes not ready after 60 s; the node's own process serves meanwhile")


def serve(config: NodeConfig, ready=None) -> None:
    """Run the DICOM node until SIGTERM/SIGINT. ``ready(node)`` is called once listening."""

    def feed(node: Node):
        skip_value_validation()
        handler = StoreHandler(node.spool, node.audit, node.arrivals.mark, config, node.metrics)
        receivers = None
        if config.receivers > 1:
            from .receivers import Receivers

            receivers = Receivers(config, config.receivers, node.arrivals.mark, node.metrics,
                                  kept_aside=handler.series_kept_aside)
            threading.Thread(target=_say_ready, args=(receivers,), name="edge-infer-receivers", daemon=True).start()
        server = start_server(config, handler, node.audit, node.metrics, receivers)
        host, port = server.server_address[:2]
        log.info("listening as %s on %s:%d (%d receiver process%s); spool %s; %s", config.ae_title, host, port,
                 config.receivers, "es" if config.receivers > 1 else "", config.spool, node.describe_model())
        stow = None
        if config.stow_port:
            stow = start_stow(config.stow_bind, config.stow_port, handler.store, node.audit, config.stow_max_mb)
            log.info("STOW-RS on http://%s:%d/studies", config.stow_bind, config.stow_port)

        def close() -> None:
            if stow is not None:
                stow.shutdown()
            server.shutdown()  # no new connection, here or handed over
            deadline = (node.stopping_since or time.monotonic()) + config.stop_timeout
            if receivers is not None:
                receivers.stop(max(0.0, deadline - time.monotonic()))
            stop_associations(server, deadline, node.audit)

        return (lambda: None), close

    _run_node(config, feed, ready)


def watch(folder: str | Path, config: NodeConfig, ready=None) -> None:
    """Watch ``folder`` until SIGTERM/SIGINT, processing what is dropped into it."""

    def feed(node: Node):
        watcher = Watcher(folder, node.spool, node.audit, node.arrivals, config.idle_seconds)
        log.info("watching %s; spool %s; %s", folder, config.spool, node.describe_model())
        return watcher.scan_once, (lambda: None)

    _run_node(config, feed, ready)
