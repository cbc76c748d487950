"""Receive by DICOMweb STOW-RS (PS3.18 10.5): an optional HTTP listener, off by default.

``POST /studies`` (or ``/studies/{uid}``, ``/dicom-web/studies``) with ``Content-Type:
multipart/related; type="application/dicom"; boundary=...``: each part is one Part 10
instance, checked and spooled exactly as a C-STORE (:meth:`.scp.StoreHandler.store`) before the
answer is sent. The body is parsed as it arrives by ``python-multipart``. Answers: 200 when
every instance was stored, 202 when some were refused, 409 when none was, with a
``application/dicom+json`` body listing the failed parts' statuses; a malformed request gets
400, 413 or 415 with one line, logged and audited. Loopback by default; for TLS put a reverse
proxy in front.
"""

from __future__ import annotations

import json
import logging
import re
from http.server import ThreadingHTTPServer
from typing import TYPE_CHECKING

from .audit import AuditLog
from .health import QuietHandler, serve_http

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

log = logging.getLogger("edge_infer.node")

INSTALL_HINT = "pip install 'edge-infer[dicom]'"
CHUNK = 1 << 20
STOW_PATH = re.compile(r"^(/dicom-web)?/studies(/[0-9.]{1,64})?/?$")


class StowProblem(Exception):
    """A request that cannot be read as STOW-RS, with the HTTP status to answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def boundary_of(content_type: str) -> bytes:
    """The multipart boundary of a STOW-RS ``Content-Type``; StowProblem when it is not one."""
    from python_multipart.multipart import parse_options_header

    kind, options = parse_options_header(content_type or "")
    if kind != b"multipart/related" or options.get(b"type", b"application/dicom") != b"application/dicom":
        raise StowProblem(415, 'Content-Type must be multipart/related; type="application/dicom"')
    if not options.get(b"boundary"):
        raise StowProblem(400, "the multipart Content-Type has no boundary")
    return options[b"boundary"]


def read_parts(stream, length: int, boundary: bytes) -> list[bytes]:
    """The bodies of the parts of a multipart body of ``length`` bytes read from ``stream``."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser

    parts: list[bytes] = []
    current: list[bytes] = []
    callbacks: MultipartCallbacks = {
        "on_part_begin": current.clear,
        "on_part_data": lambda data, start, end: current.append(bytes(data[start:end])),
        "on_part_end": lambda: parts.append(b"".join(current)),
    }
    parser = MultipartParser(boundary, callbacks)
    left = length
    try:
        while left > 0:
            chunk = stream.read(min(CHUNK, left))
            if not chunk:
                raise StowProblem(400, f"the body ended {left} bytes early")
            left -= len(chunk)
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise StowProblem(400, f"malformed multipart body ({type(exc).__name__})") from None
    if not parts:
        raise StowProblem(400, "the multipart body holds no part")
    return parts


def stow_answer(statuses: list[int]) -> tuple[int, bytes]:
    """HTTP status and ``application/dicom+json`` body (PS3.18 Table 10.5.3-1, failures only)."""
    failed = [{"00081197": {"vr": "US", "Value": [s]}} for s in statuses if s != 0]
    body = {"00081198": {"vr": "SQ", "Value": failed}} if failed else {}
    code = 200 if not failed else (409 if len(failed) == len(statuses) else 202)
    return code, json.dumps(body).encode()


def start_stow(bind: str, port: int, store, audit: AuditLog, max_mb: int) -> ThreadingHTTPServer:
    """Serve STOW-RS in a daemon thread; ``store(data) -> DIMSE status`` spools one instance."""

    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            try:
                if not STOW_PATH.match(self.path.split("?")[0]):
                    raise StowProblem(404, "not found: POST to /studies or /dicom-web/studies")
                length = int(self.headers.get("Content-Length") or -1)
                if length < 0:
                    raise StowProblem(411, "Content-Length is required")
                if length > max_mb * 2**20:
                    raise StowProblem(413, f"the request is over stow_max_mb ({max_mb} MiB)")
                parts = read_parts(self.rfile, length, boundary_of(self.headers.get("Content-Type", "")))
            except (StowProblem, ValueError) as exc:
                status = exc.status if isinstance(exc, StowProblem) else 400
                log.warning("refused a STOW-RS request from %s: %s", self.client_address[0], exc)
                audit.record("stow_refused", reason=str(exc))
                self._answer(status, (str(exc) + "\n").encode(), "text/plain; charset=utf-8")
                self.close_connection = True
                return
            code, body = stow_answer([store(part) for part in parts])
            self._answer(code, body, "application/dicom+json")

    try:
        import python_multipart  # noqa: F401
    except ImportError:
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(f"receiving by STOW-RS needs python-multipart: {INSTALL_HINT}") from None
    return serve_http(bind, port, Handler, "edge-infer-stow")
