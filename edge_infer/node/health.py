"""The node's HTTP endpoint: ``/healthz``, ``/readyz`` and ``/metrics`` (off unless a port is set).

``/healthz`` answers 200 while the process serves HTTP. ``/readyz`` answers 200 ``ready`` when
the node listens, the model is loaded and verified, the spool is writable, its disk is above
the free-space watermark and no delivery is refused permanently; otherwise 503 with the reasons,
one per line. ``/metrics`` is the Prometheus text format (:mod:`.metrics`). Loopback by default.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger("edge_infer.node")


def free_mb(folder: Path) -> float:
    """Free space for unprivileged writes on the file system of ``folder``, in MiB."""
    return shutil.disk_usage(folder).free / 2**20


def disk_problem(folder: Path, min_free_mb: int) -> str:
    """'' when ``folder``'s disk has at least ``min_free_mb`` MiB free, else the reason."""
    try:
        free = free_mb(folder)
    except OSError as exc:
        return f"spool disk unreadable ({exc.strerror or type(exc).__name__})"
    if free < min_free_mb:
        return f"spool disk has {free:.0f} MiB free, below the min_free_mb watermark of {min_free_mb} MiB"
    return ""


def spool_problem(folder: Path) -> str:
    """'' when ``folder`` is a writable directory, else the reason."""
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return "spool is not writable"
    return ""


class QuietHandler(BaseHTTPRequestHandler):
    """An HTTP handler that answers with one call and logs requests at DEBUG only."""

    def _answer(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args) -> None:  # noqa: A002 (http.server's signature)
        log.debug("http: " + format, *args)


def serve_http(bind: str, port: int, handler: type[BaseHTTPRequestHandler], name: str) -> ThreadingHTTPServer:
    """Serve ``handler`` on ``bind:port`` in a daemon thread; ``shutdown()`` the result to stop."""
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


def start_health(bind: str, port: int, readiness: Callable[[], list[str]], metrics) -> ThreadingHTTPServer:
    """Serve the three routes in a daemon thread; ``shutdown()`` the result to stop."""

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path == "/healthz":
                self._answer(200, b"ok\n", "text/plain; charset=utf-8")
            elif self.path == "/readyz":
                reasons = readiness()
                body = ("\n".join(reasons) if reasons else "ready") + "\n"
                self._answer(503 if reasons else 200, body.encode(), "text/plain; charset=utf-8")
            elif self.path == "/metrics":
                self._answer(200, *metrics.render())
            else:
                self._answer(404, b"not found: try /healthz, /readyz or /metrics\n", "text/plain; charset=utf-8")

    return serve_http(bind, port, Handler, "edge-infer-health")
