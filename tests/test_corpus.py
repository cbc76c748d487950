"""Corpus test (issue 14): every file that pydicom, pydicom-data and nibabel ship as test data,
through the readers and through ``edge-infer run``. None may raise anything but edge-infer's own errors, print a traceback,
hang, or show a patient name, patient ID or raw UID (in output, warnings or the error).

Each file is read as a DICOM folder holding only it (gzipped DICOM decompressed first), and
NIfTI files also as a single INPUT file; each source's files are also read as one folder.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import shutil
import signal
import warnings
from pathlib import Path

import nibabel
import pydicom
import pytest

from edge_infer.errors import EdgeInferError
from edge_infer.readers import read_scan


def _sources() -> dict[str, Path]:
    roots = {"pydicom": Path(pydicom.data.__file__).parent,
             "nibabel": Path(nibabel.__file__).parent / "tests" / "data",
             "nicom": Path(nibabel.__file__).parent / "nicom" / "tests" / "data"}
    try:
        import data_store       # pydicom-data: pip install pydicom-data (in the dev extra)

        roots["pydicom-data"] = Path(data_store.__file__).parent / "data"
    except ImportError:
        pass
    return {name: root for name, root in roots.items() if root.is_dir()}


SOURCES = _sources()
_SKIP_SUFFIXES = (".py", ".pyc", ".md", ".rst", ".txt", ".json", ".m")
FILES = sorted((name, path) for name, root in SOURCES.items() for path in root.rglob("*")
               if path.is_file() and not path.name.endswith(_SKIP_SUFFIXES) and "__pycache__" not in path.parts)
#: seconds one read may take before it counts as a hang
HANG_SECONDS = 60


def _secrets(path: Path) -> set[str]:
    """Patient name parts, patient ID and UIDs of a DICOM file that must not be shown
    (values that are also the series' description, which the reader may show, excepted)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".dcm.gz") else path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True, force=True)
            values = [str(ds.get("PatientName", "")), str(ds.get("PatientID", ""))]
            uids = [str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
            shown = f"{ds.get('SeriesDescription', '')} {ds.get('ProtocolName', '')}".lower()
    except Exception:           # noqa: BLE001 - not DICOM, or unreadable: nothing to protect
        return set()
    parts = {p.strip() for v in values for p in v.replace("=", "^").split("^")}
    return {p for p in parts if len(p) >= 4 and p.lower() not in shown} | {u for u in uids if len(u) >= 8}


def _alarm(signum, frame):
    raise TimeoutError(f"a read took more than {HANG_SECONDS} s")


def _read(inputs: list[Path]) -> str:
    """What a read shows: the scan's source (warnings included) as JSON or the error's message,
    and every Python warning and log record that escaped the reader (pytest would hide them)."""
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(HANG_SECONDS)
    records = _Records()
    logging.getLogger().addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as escaped:
            warnings.simplefilter("always")
            try:
                shown = json.dumps(read_scan(inputs, ("t1",)).source, default=str)
            except EdgeInferError as exc:
                assert "\n" not in str(exc), f"a multi-line error: {exc!r}"
                shown = str(exc)
        return " ".join([shown, *(str(w.message) for w in escaped), *records.texts])
    finally:
        logging.getLogger().removeHandler(records)
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())


def _inputs(path: Path, folder: Path) -> list[list[Path]]:
    """The ways ``path`` is read: as a folder holding it, and a NIfTI file on its own."""
    folder.mkdir()
    name = path.name
    if name.endswith(".dcm.gz"):
        (folder / name[:-3]).write_bytes(gzip.decompress(path.read_bytes()))
    else:
        shutil.copy(path, folder / name)
    ways = [[folder]]
    if name.endswith((".nii", ".nii.gz")):
        ways.append([path])
    return ways


@pytest.mark.skipif(not FILES, reason="no test data installed")
@pytest.mark.parametrize("source, path", FILES, ids=[f"{s}/{p.name}" for s, p in FILES])
def test_file_is_read_or_refused_cleanly(source, path, tmp_path, capfd):
    secrets = _secrets(path)
    for inputs in _inputs(path, tmp_path / "in"):
        shown = _read(inputs)
        out, err = capfd.readouterr()
        everything = shown + out + err
        assert "Traceback" not in everything
        leaked = sorted(s for s in secrets if s in everything)
        assert not leaked, f"{path.name} shows patient data or raw UIDs: {leaked}"


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_each_source_as_one_folder(source, tmp_path, capfd):
    """All of a source's files in one folder: many series, one error or scan, no leak."""
    folder = tmp_path / "all"
    folder.mkdir()
    secrets: set[str] = set()
    for k, (name, path) in enumerate(FILES):
        if name == source and not path.name.endswith(".gz"):
            shutil.copy(path, folder / f"{k:04d}_{path.name}")
            secrets |= _secrets(path)
    shown = _read([folder])
    out, err = capfd.readouterr()
    everything = shown + out + err
    assert "Traceback" not in everything
    assert not sorted(s for s in secrets if s in everything)


def _secrets_in(path: Path) -> set[str]:
    return _secrets(path) if path.is_file() else set()


@pytest.mark.skipif(not FILES, reason="no test data installed")
@pytest.mark.parametrize("source, path", FILES, ids=[f"{s}/{p.name}" for s, p in FILES])
def test_run_on_file_exits_cleanly(source, path, tmp_path, capfd):
    """``edge-infer run`` on the file (NIfTI) and on a folder holding it, with the bundled
    model: exit 0 with every output, or exit 2 with one line and nothing written; never 1,
    a traceback, a patient name, ID or raw UID."""
    from click.testing import CliRunner

    from edge_infer.cli import main

    secrets = _secrets_in(path)
    for k, inputs in enumerate(_inputs(path, tmp_path / "in")):
        out = tmp_path / f"out{k}"
        result = CliRunner().invoke(main, ["run", *map(str, inputs), "-o", str(out), "--no-progress"])
        captured = capfd.readouterr()
        everything = result.output + captured.out + captured.err
        assert result.exit_code in (0, 2), f"{path.name}: exit {result.exit_code}: {everything[-500:]}"
        assert "Traceback" not in everything
        assert not sorted(s for s in secrets if s in everything), f"{path.name} shows patient data"
        written = sorted(p.name for p in out.rglob("*")) if out.exists() else []
        if result.exit_code == 2:
            assert len(result.output.strip().splitlines()) == 1, result.output
            assert written == [], f"{path.name}: exit 2 but {written} left on disk"
        else:
            assert any(n.endswith("_mask.nii.gz") for n in written) and any(n.endswith("_report.json") for n in written)
