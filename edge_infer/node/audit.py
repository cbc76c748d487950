"""The audit log: one JSON object per line, appended and fsynced, never rewritten.

Each record has ``time`` (UTC, ISO 8601), ``event`` and fields that identify things by hash
only (study and series UID hashes, job ids, the model sha256), never patient data.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import threading
from pathlib import Path
from typing import Any

#: the fields a record may carry besides time and event; anything else is refused
FIELDS = frozenset({
    "study", "series", "case", "job", "instances", "model_sha256", "model", "outcome", "error",
    "seconds", "destination", "attempts", "outputs", "calling_ae", "reason", "files", "volumes_ml",
})


class AuditLog:
    """Append-only JSON-lines log, safe to call from several threads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one record and fsync it; returns the record."""
        unknown = sorted(set(fields) - FIELDS)
        if unknown:
            raise ValueError(f"audit fields {unknown} are not allowed (allowed: {sorted(FIELDS)})")
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        rec = {"time": now, "event": event, **{k: v for k, v in fields.items() if v is not None}}
        line = (json.dumps(rec, sort_keys=True, default=str) + "\n").encode("utf-8")
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        return rec


def read_audit(path: str | Path) -> list[dict[str, Any]]:
    """Every record of an audit log (a torn last line from a crash is skipped)."""
    out: list[dict[str, Any]] = []
    p = Path(path)
    if not p.is_file():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out
