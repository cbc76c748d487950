"""Helpers for the DICOM node tests: studies, free loopback ports, real peers as subprocesses.

Every wait has a timeout; every process started here is stopped by :meth:`Proc.stop` (the
fixtures call it in teardown). Only the loopback address is used.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pydicom

from dicom_factory import write_dicom_study

LOOPBACK = "127.0.0.1"
MODALITIES = ("t1", "t1ce", "t2", "flair")
SHAPE = (32, 32, 12)
#: patient data written into every test instance; must never appear in logs, audit or reports
PATIENT_NAME = "Zyxqmarker^Patientname"
PATIENT_ID = "PIDMARKER4242"
MARKERS = ("Zyxqmarker", PATIENT_ID)
NODE_AE = "EDGE_INFER"
CLIENT_AE = "STORESCU"
DEST_AE = "DEST"

ROOT = Path(__file__).resolve().parent.parent


def dcmtk(tool: str) -> str | None:
    """Absolute path of DCMTK's ``tool`` on PATH, or None.

    pynetdicom installs Python console scripts with the same names (echoscu, storescu,
    storescp) and other options into the virtual environment's bin folder, which comes first
    on PATH in an activated venv; those are skipped: only a compiled executable counts.
    """
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        path = Path(folder or ".") / tool
        if path.is_file() and os.access(path, os.X_OK):
            with open(path, "rb") as fh:
                if fh.read(4) == b"\x7fELF":
                    return str(path)
    return None


def have_dcmtk() -> bool:
    return all(dcmtk(t) for t in ("storescu", "storescp", "echoscu"))


def free_port() -> int:
    """A TCP port free on the loopback address right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.1):
    """Poll ``predicate`` until it returns a true value; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


def write_study(folder: Path, seed: int = 0, shape=SHAPE) -> dict[str, list[Path]]:
    """A 4-series MR study (one series per modality, in subfolders) with a bright blob in FLAIR/T2."""
    rng = np.random.default_rng(seed)
    data = rng.integers(100, 300, (4, *shape)).astype(np.int16)
    c = np.array(shape) // 2
    data[2:, c[0] - 5:c[0] + 5, c[1] - 5:c[1] + 5, max(c[2] - 3, 0):c[2] + 3] = 1500
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[:3, 3] = [-16.0, -16.0, 0.0]
    return write_dicom_study(folder, data, affine, MODALITIES, subfolders=True, seed=seed,
                             patient_name=PATIENT_NAME, patient_id=PATIENT_ID)


def study_files(files: dict[str, list[Path]]) -> list[Path]:
    return [p for m in MODALITIES for p in files[m]]


class Proc:
    """A subprocess with its output in a log file."""

    def __init__(self, args: Sequence[str], log: Path, env: dict | None = None) -> None:
        self.args = list(args)
        self.log = log
        self._fh = open(log, "ab")
        self.popen = subprocess.Popen(self.args, stdout=self._fh, stderr=subprocess.STDOUT, cwd=str(ROOT),
                                      env=env, start_new_session=True)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL (a crash, no clean-up)."""
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit within ``timeout``."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)
        self._fh.close()
        return self.popen.returncode

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def node_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def write_config(path: Path, spool: Path, port: int, model: Path, *, dest_port: int | None = None,
                 idle: float = 1.0, allowed=(CLIENT_AE, "ECHOSCU", "PYNETDICOM"), extra: str = "") -> Path:
    lines = [f'spool = "{spool}"', f"port = {port}", f'bind = "{LOOPBACK}"', f"idle_seconds = {idle}",
             f'model = "{model}"', "threads = 1", "retry_initial = 0.3", "retry_max = 1.0", "poll_seconds = 0.1",
             "allowed_aes = [" + ", ".join(f'"{a}"' for a in allowed) + "]", "max_associations = 8", extra]
    if dest_port:
        lines += ["[destination]", f'ae_title = "{DEST_AE}"', f'host = "{LOOPBACK}"', f"port = {dest_port}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_node(command: str, config: Path, log: Path, *args: str) -> Proc:
    """``python -m edge_infer.cli_node serve|watch --config CONFIG ...`` as a subprocess."""
    return Proc([sys.executable, "-m", "edge_infer.cli_node", command, "--config", str(config), *args], log, node_env())


def echo(port: int, aet: str = "ECHOSCU") -> subprocess.CompletedProcess:
    """One C-ECHO to the node with DCMTK's echoscu."""
    return subprocess.run([dcmtk("echoscu"), "-aet", aet, "-aec", NODE_AE, "-to", "5", LOOPBACK, str(port)],
                          capture_output=True, text=True, timeout=30)


def echo_ok(port: int, aet: str = "ECHOSCU") -> bool:
    return echo(port, aet).returncode == 0


def wait_listening(proc: Proc, port: int, timeout: float = 180.0) -> None:
    last = []

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"the node exited early:\n{proc.text()[-3000:]}")
        out = echo(port)
        last[:] = [out.stderr.strip()[-1000:]]
        return out.returncode == 0

    try:
        wait_until(ready, timeout, f"the node to answer C-ECHO on port {port}", step=0.3)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; last echoscu said: {last[0] if last else ''}; node log:\n"
                           f"{proc.text()[-2000:]}") from None


def storescu(port: int, files: Sequence[Path], aet: str = CLIENT_AE, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Send ``files`` with DCMTK's storescu in one association."""
    return subprocess.run([dcmtk("storescu"), "-aet", aet, "-aec", NODE_AE, "-to", "20", LOOPBACK, str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=timeout)


def start_storescp(port: int, folder: Path, log: Path) -> Proc:
    """DCMTK's storescp as the destination node, writing what it receives into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return Proc([dcmtk("storescp"), "-aet", DEST_AE, "-od", str(folder), str(port)], log)


def received_segs(folder: Path) -> dict[str, pydicom.Dataset]:
    """SOPInstanceUID -> dataset of every SEG the destination holds."""
    out = {}
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if p.is_file():
            try:
                ds = pydicom.dcmread(p, stop_before_pixels=True)
            except (pydicom.errors.InvalidDicomError, OSError, EOFError):
                continue
            if getattr(ds, "Modality", "") == "SEG":
                out[str(ds.SOPInstanceUID)] = ds
    return out


def text_of(paths: Sequence[Path]) -> str:
    """The text of the logs, audit and reports that must hold no patient data."""
    return "\n".join(p.read_text(errors="replace") for p in paths if p.is_file())


def report_and_log_files(spool: Path) -> list[Path]:
    files = [spool / "audit.jsonl"]
    for sub in ("outbox", "sent", "failed", "quarantine"):
        d = spool / sub
        if d.is_dir():
            files += [p for p in d.rglob("*") if p.is_file() and p.suffix in (".json", ".txt", ".jsonl")]
    return files


def fake_seg_bytes() -> bytes:
    """pydicom's MR_small labelled Segmentation Storage: enough for peers that do not check the IOD."""
    import io

    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
