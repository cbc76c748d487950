"""The spool: every received instance, job state and result, on disk, written atomically.

Layout under the spool root::

    tmp/                          partial writes (cleared at start)
    studies/<study>/data/<series>/<instance>.dcm    instances that start a job (the input)
    studies/<study>/other/<series>/<instance>.dcm   instances kept aside (SEG, SR, CT...; not input)
    studies/<study>/state.json    {"status": received|processing|done, "fingerprint", ...}
    cases/<case>/data/<file>      NIfTI cases dropped into a watched folder
    cases/<case>/state.json
    quarantine/<sha256>.dcm       refused instances, with <sha256>.txt saying why
    rerun/<study>                 an operator's request to segment a study again (edge-infer rerun)
    outbox/<job>/                 results of a job; delivery.json while a send is pending
    sent/<job>/                   results delivered to the destination
    failed/<study>-<time>/        a study that could not be processed, with error.txt
    audit.jsonl                   the audit log (see :mod:`.audit`)

File and folder names are hashes of UIDs (:func:`instance_name`), never the UIDs, so a
crafted UID cannot traverse paths. Every file is written to ``tmp/``, fsynced, then renamed
into place, and the folder fsynced (a folder created for it, and its parent, too): a file
under its final name is complete, and durable once :func:`atomic_write` returns. Threads
writing into the same folder at once share that folder's fsync (:mod:`.groupsync`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..uids import uid_hash
from ..writers import fsync_dir as _fsync_dir, write_synced
from .groupsync import FolderSync

_COUNTER = itertools.count()
_LOCK = threading.Lock()

STATUS_RECEIVED, STATUS_PROCESSING, STATUS_DONE, STATUS_RERUN = "received", "processing", "done", "rerun"


def instance_name(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """The file name of an instance: 32 hex digits of the sha256 of its three UIDs."""
    text = "\\".join((study_uid, series_uid, sop_uid))
    return hashlib.sha256(text.encode("ascii", "replace")).hexdigest()[:32] + ".dcm"


def safe_name(name: str) -> str:
    """A file name reduced to ``[A-Za-z0-9._-]`` with no leading dot (for dropped NIfTI files)."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(name).name).lstrip(".")
    return cleaned or "file"


def fsync_dir(folder: Path) -> None:
    """fsync a folder so a rename in it survives a power cut; errors propagate."""
    _fsync_dir(folder, strict=True)


_FOLDERS = FolderSync(fsync_dir)


#: folders known created and synced into their parents: path -> (st_dev, st_ino) when synced
_DURABLE_FOLDERS: OrderedDict[Path, tuple[int, int]] = OrderedDict()
_DURABLE_KEEP = 4096


def _identity(folder: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def make_folders(folder: Path, root: Path) -> None:
    """Create ``folder`` and its missing parents up to ``root`` (which exists); return once each
    one's entry in its parent is durable. Folders outside ``root`` are only created.

    The first call for a folder (by its inode: a folder moved away and made again counts as
    new) fsyncs its parent even when it exists, as another thread may have just made it;
    later calls cost one stat.
    """
    if folder == root or root not in folder.parents:
        folder.mkdir(parents=True, exist_ok=True)
        return
    ident = _identity(folder)
    with _LOCK:
        if ident is not None and _DURABLE_FOLDERS.get(folder) == ident:
            _DURABLE_FOLDERS.move_to_end(folder)
            return
    make_folders(folder.parent, root)
    folder.mkdir(exist_ok=True)
    ident = _identity(folder)
    _FOLDERS.sync(folder.parent)
    with _LOCK:
        if ident is not None:
            _DURABLE_FOLDERS[folder] = ident
        while len(_DURABLE_FOLDERS) > _DURABLE_KEEP:
            _DURABLE_FOLDERS.popitem(last=False)


def atomic_write(path: Path, data: bytes, tmp_dir: Path) -> Path:
    """Write ``data`` to ``path`` via ``tmp_dir`` (same file system, the spool's ``tmp/``):
    write, fsync, rename, fsync the folder (and new folders up to the spool); durable when it
    returns."""
    make_folders(path.parent, tmp_dir.parent)
    with _LOCK:
        n = next(_COUNTER)
    tmp = write_synced(tmp_dir / f"{os.getpid()}-{threading.get_ident()}-{n}.part", data)
    os.replace(tmp, path)
    _FOLDERS.sync(path.parent)
    return path


class Spool:
    """The spool folder of a node (see the module docstring for its layout)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.studies = self.root / "studies"
        self.cases = self.root / "cases"
        self.quarantine_dir = self.root / "quarantine"
        self.outbox = self.root / "outbox"
        self.sent = self.root / "sent"
        self.failed = self.root / "failed"
        self.audit_path = self.root / "audit.jsonl"
        self.rerun = self.root / "rerun"
        folders = (self.rerun, self.tmp, self.studies, self.cases, self.quarantine_dir, self.outbox, self.sent,
                   self.failed)
        for d in folders:
            d.mkdir(parents=True, exist_ok=True)

    def clear_tmp(self) -> int:
        """Remove partial writes a killed process left; returns how many."""
        removed = 0
        for p in self.tmp.iterdir():
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink(missing_ok=True)
            removed += 1
        return removed

    def write(self, path: Path, data: bytes) -> Path:
        return atomic_write(path, data, self.tmp)

    # -- instances -----------------------------------------------------------------------------
    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str, usable: bool = True) -> Path:
        folder = self.data_dir(uid_hash(study_uid)) if usable else self.studies / uid_hash(study_uid) / "other"
        return folder / uid_hash(series_uid) / instance_name(study_uid, series_uid, sop_uid)

    def store_instance(self, data: bytes, study_uid: str, series_uid: str, sop_uid: str,
                       usable: bool = True) -> Path:
        """Place one instance atomically; a resent instance replaces its earlier copy.

        ``usable`` instances go to the job's input (``data/``), the rest to ``other/``. A resend
        of the same bytes is already on disk: it is not written (nor synced) again.
        """
        path = self.instance_path(study_uid, series_uid, sop_uid, usable)
        try:
            if path.stat().st_size == len(data) and path.read_bytes() == data:
                return path
        except FileNotFoundError:
            pass
        return self.write(path, data)

    def other_series(self, key: str) -> dict[str, list[Path]]:
        """Series hash -> the instances of a study kept aside (not input), sorted."""
        folder = self.job_dir(key) / "other"
        if not folder.is_dir():
            return {}
        return {d.name: sorted(d.iterdir()) for d in sorted(folder.iterdir()) if d.is_dir()}

    def quarantine(self, data: bytes, reason: str) -> Path:
        """Keep a refused instance (named by the sha256 of its bytes) and why it was refused."""
        digest = hashlib.sha256(data).hexdigest()
        self.write(self.quarantine_dir / f"{digest}.txt", (reason + "\n").encode("utf-8"))
        return self.write(self.quarantine_dir / f"{digest}.dcm", data)

    # -- jobs (studies and NIfTI cases) --------------------------------------------------------
    def job_dir(self, key: str) -> Path:
        """``study:<hash>`` -> studies/<hash>, ``case:<hash>`` -> cases/<hash>."""
        kind, _, h = key.partition(":")
        if kind not in ("study", "case") or not h or not all(c in "0123456789abcdef" for c in h):
            raise ValueError(f"not a spool job key: {key!r}")
        return (self.studies if kind == "study" else self.cases) / h

    def data_dir(self, study_hash: str) -> Path:
        return self.studies / study_hash / "data"

    def keys(self) -> list[str]:
        """Every job in the spool, as ``study:<hash>`` / ``case:<hash>``."""
        out = [f"study:{p.name}" for p in sorted(self.studies.iterdir()) if p.is_dir()]
        return out + [f"case:{p.name}" for p in sorted(self.cases.iterdir()) if p.is_dir()]

    def files(self, key: str) -> list[Path]:
        data = self.job_dir(key) / "data"
        return sorted(p for p in data.rglob("*") if p.is_file()) if data.is_dir() else []

    def fingerprint(self, key: str) -> str:
        """sha256 of the job's file names (hashes of UIDs) and sizes: changes when an instance arrives."""
        data = self.job_dir(key) / "data"
        h = hashlib.sha256()
        for p in self.files(key):
            h.update(f"{p.relative_to(data)}:{p.stat().st_size}\n".encode())
        return h.hexdigest()

    def series_counts(self, key: str) -> dict[str, int]:
        """Series hash (or file name for cases) -> number of files."""
        data = self.job_dir(key) / "data"
        counts: dict[str, int] = {}
        for p in self.files(key):
            part = p.relative_to(data).parts[0]
            counts[part] = counts.get(part, 0) + 1
        return counts

    def request_rerun(self, study_hash: str) -> Path:
        """Ask the running (or next) node to segment ``study_hash`` again and send the result again."""
        key = f"study:{study_hash}"
        if not (self.job_dir(key) / "data").is_dir():
            raise FileNotFoundError(f"no study {study_hash} with input instances in {self.studies}")
        return self.write(self.rerun / study_hash, b"")

    def take_reruns(self) -> list[str]:
        """The studies asked to re-run (requests removed); unknown ones are dropped."""
        keys = []
        for p in sorted(self.rerun.iterdir()):
            p.unlink(missing_ok=True)
            key = f"study:{p.name}"
            try:
                if (self.job_dir(key) / "data").is_dir():
                    keys.append(key)
            except ValueError:
                continue
        return keys

    def read_state(self, key: str) -> dict[str, Any]:
        path = self.job_dir(key) / "state.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {"status": "unreadable"}

    def write_state(self, key: str, **state: Any) -> None:
        state["updated"] = time.time()
        self.write(self.job_dir(key) / "state.json", json.dumps(state, sort_keys=True).encode())

    def pending(self) -> list[str]:
        """Jobs with files not yet processed: no state, received, processing (killed), or done
        with files that arrived since."""
        out = []
        for key in self.keys():
            state = self.read_state(key)
            if not self.files(key) and not (key.startswith("study:") and self.other_series(key)):
                continue
            if state.get("status") != STATUS_DONE or state.get("fingerprint") != self.fingerprint(key):
                out.append(key)
        return out

    def move_to_failed(self, key: str, error: str) -> Path:
        """Move a job's folder to failed/ with ``error.txt``; returns the new folder."""
        src = self.job_dir(key)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        dst = self.failed / f"{src.name}-{stamp}"
        n = 1
        while dst.exists():
            dst = self.failed / f"{src.name}-{stamp}-{n}"
            n += 1
        os.replace(src, dst)
        self.write(dst / "error.txt", (error + "\n").encode("utf-8"))
        fsync_dir(self.failed)
        return dst

    # -- outbox ---------------------------------------------------------------------------------
    def commit_outbox(self, job_id: str, files: Mapping[str, bytes], delivery: Mapping[str, Any] | None) -> Path:
        """Place a job's results as outbox/<job_id>/ in one rename; a no-op if it exists."""
        final = self.outbox / job_id
        if final.exists() or (self.sent / job_id).exists():
            return final if final.exists() else self.sent / job_id
        staging = self.tmp / f"outbox-{job_id}-{os.getpid()}"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        for name, data in files.items():
            atomic_write(staging / name, data, self.tmp)
        if delivery is not None:
            atomic_write(staging / "delivery.json", json.dumps(dict(delivery), sort_keys=True).encode(), self.tmp)
        os.replace(staging, final)
        fsync_dir(self.outbox)
        return final

    def deliveries(self) -> Iterator[tuple[Path, dict[str, Any]]]:
        """Outbox folders with a pending delivery, and their delivery state."""
        for folder in sorted(self.outbox.iterdir()):
            path = folder / "delivery.json"
            if path.is_file():
                try:
                    yield folder, json.loads(path.read_text(encoding="utf-8"))
                except ValueError:
                    yield folder, {"attempts": 0, "next_try": 0.0}

    def mark_sent(self, folder: Path) -> Path:
        dst = self.sent / folder.name
        (folder / "delivery.json").unlink(missing_ok=True)
        os.replace(folder, dst)
        fsync_dir(self.sent)
        return dst
