"""Watch a drop folder: files that stop changing are moved into the spool and processed.

A file counts when its size and modification time have not changed for the idle time. It is
then checked and copied into the spool atomically, and only then removed from the drop
folder (a crash in between copies it again: the spool name is the same). DICOM instances
join their study as if received over the network; NIfTI files join a case named by their
folder (a BraTS case folder) or by their name without the modality suffix (``case_t1.nii.gz``
-> ``case``). Anything else goes to quarantine. Hidden files and names ending ``.part``,
``.tmp`` or ``.partial`` are left alone (writers still busy with them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from ..nifti import is_nifti_name, modality_from_name
from ..uids import uid_hash
from .arrivals import Arrivals
from .audit import AuditLog
from .scp import InstanceProblem, check_instance
from .spool import Spool, safe_name

log = logging.getLogger("edge_infer.node")

BUSY_SUFFIXES = (".part", ".tmp", ".partial", ".crdownload")


def case_key(path: Path, root: Path) -> str:
    """The NIfTI case a dropped file belongs to: its folder, or its name without the modality."""
    rel = path.relative_to(root)
    if len(rel.parts) > 1:
        return "/".join(rel.parts[:-1])
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.rsplit("_", 1)[0] if modality_from_name(path) and "_" in name else name


def is_busy(path: Path, root: Path) -> bool:
    """Hidden, or named like a file still being written."""
    rel = path.relative_to(root)
    return any(part.startswith(".") for part in rel.parts) or path.name.endswith(BUSY_SUFFIXES)


class Watcher:
    """Polls a drop folder and ingests stable files into the spool."""

    def __init__(self, folder: str | Path, spool: Spool, audit: AuditLog, arrivals: Arrivals,
                 stable_seconds: float, clock=time.monotonic) -> None:
        self.folder = Path(folder)
        self.spool = spool
        self.audit = audit
        self.arrivals = arrivals
        self.stable_seconds = stable_seconds
        self._clock = clock
        self._seen: dict[Path, tuple[tuple[int, int], float]] = {}

    def scan_once(self) -> list[str]:
        """One poll: ingest the files stable for long enough; returns the job keys they joined."""
        now = self._clock()
        present = set()
        joined = []
        for path in self._files():
            present.add(path)
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            signature = (st.st_size, st.st_mtime_ns)
            prev = self._seen.get(path)
            if prev is None or prev[0] != signature:
                self._seen[path] = (signature, now)
                continue
            if now - prev[1] >= self.stable_seconds:
                key = self.ingest(path)
                self._seen.pop(path, None)
                if key:
                    joined.append(key)
        for gone in set(self._seen) - present:
            self._seen.pop(gone, None)
        return joined

    def _files(self) -> list[Path]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.folder, followlinks=False):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                p = Path(dirpath) / name
                if p.is_file() and not p.is_symlink() and not is_busy(p, self.folder):
                    out.append(p)
        return sorted(out)

    def ingest(self, path: Path) -> str | None:
        """Copy one stable file into the spool (or quarantine), then remove it; returns its job key."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("cannot read a dropped file: %s", exc.strerror or type(exc).__name__)
            return None
        key = None
        if len(data) >= 132 and data[128:132] == b"DICM":
            try:
                ids = check_instance(data)
                self.spool.store_instance(data, ids.study, ids.series, ids.sop, usable=ids.usable)
                key = f"study:{uid_hash(ids.study)}"
            except InstanceProblem as problem:
                self._quarantine(path, data, str(problem))
        elif is_nifti_name(path):
            case = case_key(path, self.folder)
            h = hashlib.sha256(case.encode("utf-8", "replace")).hexdigest()[:16]
            key = f"case:{h}"
            folder = self.spool.job_dir(key)
            self.spool.write(folder / "data" / safe_name(path.name), data)
            if not (folder / "case.json").exists():
                self.spool.write(folder / "case.json", json.dumps({"name": safe_name(case)}).encode())
        else:
            self._quarantine(path, data, "neither DICOM (no DICM prefix) nor NIfTI (.nii, .nii.gz)")
        path.unlink(missing_ok=True)
        if key:
            self.arrivals.mark(key)
        return key

    def _quarantine(self, path: Path, data: bytes, reason: str) -> None:
        """Keep a refused file in quarantine (dropped file names may hold patient names: not logged)."""
        kept = self.spool.quarantine(data, reason)
        log.warning("refused a dropped file: %s; kept as quarantine/%s", reason, kept.name)
        self.audit.record("file_refused", reason=reason, files=kept.name)
