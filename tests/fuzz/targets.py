"""One harness per parser, and the property every harness checks.

A harness takes the fuzzer's bytes, places them where the parser expects them (a file, a
folder of files, a C-STORE data set) and calls the parser as edge-infer does. The property,
checked by :func:`check`: the input loads, or raises edge-infer's own error
(:class:`~edge_infer.errors.EdgeInferError`; for the node's receive path the node's
:class:`~edge_infer.node.scp.InstanceProblem`, answered with a DIMSE status) whose message is
one line and holds no patient marker and no raw UID (a transfer syntax or SOP class UID, even a
corrupt one, is a code, not patient data); nothing else escapes. Time and memory are
bounded by libFuzzer (``-timeout``, ``-rss_limit_mb``: :data:`TIMEOUT_S`, :data:`RSS_LIMIT_MB`),
with the readers told that only :data:`AVAILABLE_BYTES` of memory is free, and by each harness's
input budget (:attr:`Target.max_len`, libFuzzer's ``-max_len``): a fuzzer that feeds a parser
megabytes per input explores slowly.

Inputs holding several files (a DICOM series) join them with :data:`SEP`.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edge_infer import scan as scan_module
from edge_infer.errors import EdgeInferError

#: free memory the readers are told they have (their volume limit is a quarter of it)
AVAILABLE_BYTES = 256 << 20
#: libFuzzer's per-input limits: wall seconds, resident megabytes of the whole process
TIMEOUT_S = 10
RSS_LIMIT_MB = 2048
#: separates the files of a multi-file input
SEP = b"\x00EDGE-INFER-FILE\x00"
#: at most this many files are made from one input
MAX_FILES = 8
#: planted in every DICOM seed's patient fields; an error message must never show them
PATIENT_MARKERS = ("FUZZ^MARKER", "FUZZMARKER")
#: the SOP instance the node harness's C-STORE request names (the seeds carry it)
STORE_SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.18"
STORE_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.4"
#: a raw UID in a message (DICOM's own 1.2.840.10008 registry UIDs are not patient data)
_UID = re.compile(r"(?<![\d.])(?!1\.2\.840\.10008\.)\d+(?:\.\d+){4,}")
#: a UID named as a transfer syntax or SOP class (a code, even a corrupt one; not patient data)
_NAMES_A_CODE = re.compile(r"syntax|class", re.I)
#: the code a transfer syntax or SOP class is named by (the message may repeat it further on)
_CODE_NAMED = re.compile(r"(?:syntax|class) (\S+)", re.I)


class PropertyViolation(AssertionError):
    """An input broke the harness property (a finding)."""


@dataclass(frozen=True)
class Target:
    """A harness: its name, the parser modules it exercises, and the function taking bytes."""

    name: str
    modules: tuple[str, ...]
    run: Callable[[bytes, Path], None]
    dictionary: str  # tests/fuzz/dicts/<dictionary>.dict
    max_len: int = 4096  # the input budget in bytes (libFuzzer's -max_len)


def check(target: Target, data: bytes, workdir: Path) -> str:
    """Run one input; return ``"loaded"`` or ``"refused"``; raise on a property violation."""
    try:
        target.run(data, workdir)
    except EdgeInferError as exc:
        check_message(str(exc))
        return "refused"
    return "loaded"


def check_message(text: str) -> None:
    """Refuse a message of several lines, or one showing a patient marker or a raw UID."""
    if "\n" in text.strip():
        raise PropertyViolation(f"error message is not one line: {text[:300]!r}")
    if any(m.lower() in text.lower() for m in PATIENT_MARKERS):
        raise PropertyViolation(f"error message shows a patient marker: {text[:300]!r}")
    codes = {m.group(1).strip("(),;") for m in _CODE_NAMED.finditer(text)}
    for found in _UID.finditer(text):
        named = _NAMES_A_CODE.search(text[max(0, found.start() - 40):found.start()])
        if not named and _token_at(text, found.start()) not in codes:
            raise PropertyViolation(f"error message shows a raw UID: {text[:300]!r}")


def _token_at(text: str, index: int) -> str:
    """The word (between white space, brackets and commas stripped) that holds ``text[index]``."""
    start = text.rfind(" ", 0, index) + 1
    end = text.find(" ", index)
    return text[start:end if end >= 0 else len(text)].strip("(),;")


def limit_memory() -> None:
    """Tell the readers that only :data:`AVAILABLE_BYTES` are free (for this process)."""
    scan_module.available_memory_bytes = lambda: AVAILABLE_BYTES


@contextlib.contextmanager
def limited_memory() -> Iterator[None]:
    """:func:`limit_memory` for the block only (a replay inside a test session)."""
    saved = scan_module.available_memory_bytes
    limit_memory()
    try:
        yield
    finally:
        scan_module.available_memory_bytes = saved


def split_files(data: bytes) -> list[bytes]:
    """The files of a multi-file input (at most :data:`MAX_FILES`)."""
    return data.split(SEP)[:MAX_FILES]


def _fresh(workdir: Path, name: str) -> Path:
    folder = workdir / name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    return folder


def _nifti_name(data: bytes, stem: str) -> str:
    return f"{stem}.nii.gz" if data[:2] == b"\x1f\x8b" else f"{stem}.nii"


# -- NIfTI -------------------------------------------------------------------------------------
def run_nifti(data: bytes, workdir: Path) -> None:
    """One 3D NIfTI file through :func:`edge_infer.readers.read_scan`."""
    from edge_infer.readers import read_scan

    path = _fresh(workdir, "nifti") / _nifti_name(data, "case_t1")
    path.write_bytes(data)
    _finite(read_scan([path], ("t1",)))


def run_nifti4d(data: bytes, workdir: Path) -> None:
    """One 4D NIfTI file holding four modalities."""
    from edge_infer.readers import read_scan

    path = _fresh(workdir, "nifti4d") / _nifti_name(data, "case")
    path.write_bytes(data)
    _finite(read_scan([path], ("t1", "t1ce", "t2", "flair")))


def run_brats(data: bytes, workdir: Path) -> None:
    """A BraTS case folder: the input as the T1 file beside three valid files of one grid."""
    from edge_infer.readers import read_scan

    folder = _fresh(workdir, "brats")
    (folder / _nifti_name(data, "case_t1")).write_bytes(data)
    for modality, raw in _brats_companions().items():
        (folder / f"case_{modality}.nii.gz").write_bytes(raw)
    _finite(read_scan([folder], ("t1", "t1ce", "t2", "flair")))


_COMPANIONS: dict[str, bytes] = {}


def _brats_companions() -> dict[str, bytes]:
    """Valid T1ce, T2 and FLAIR files on the grid of the brats seed (8 x 7 x 5, 1 x 1.2 x 2 mm)."""
    if not _COMPANIONS:
        import nibabel as nib

        rng = np.random.default_rng(18)
        for modality in ("t1ce", "t2", "flair"):
            vol = rng.normal(100, 20, (8, 7, 5)).astype(np.float32)
            raw = nib.Nifti1Image(vol, np.diag([1.0, 1.2, 2.0, 1.0])).to_bytes()
            _COMPANIONS[modality] = gzip.compress(raw, compresslevel=1, mtime=0)
    return _COMPANIONS


def _finite(scan) -> None:
    if scan.data.dtype != np.float32 or not np.isfinite(scan.data).all():
        raise PropertyViolation(f"a loaded scan holds {scan.data.dtype} or non-finite values")


# -- DICOM -------------------------------------------------------------------------------------
def _dicom_folder(files: list[bytes], workdir: Path) -> Path:
    folder = _fresh(workdir, "dicom")
    for k, raw in enumerate(files):
        (folder / f"im{k}.dcm").write_bytes(raw)
    return folder


def run_dicom(data: bytes, workdir: Path) -> None:
    """One DICOM file (single- or multi-frame) through :func:`edge_infer.dicom.read_dicom_folder`."""
    from edge_infer.dicom import read_dicom_folder

    _finite(read_dicom_folder(_dicom_folder([data], workdir), ["t1"]))


def run_dicom_series(data: bytes, workdir: Path) -> None:
    """A series folder of up to :data:`MAX_FILES` files (the input split at :data:`SEP`)."""
    from edge_infer.dicom import read_dicom_folder

    _finite(read_dicom_folder(_dicom_folder(split_files(data), workdir), ["t1"]))


def run_seg(data: bytes, workdir: Path) -> None:
    """SEG writer inputs: a scan reference built from the (mutated) headers of a series, and
    an empty label map on its grid, through :func:`edge_infer.seg.seg_bytes`."""
    from edge_infer.dicom import read_dicom_folder
    from edge_infer.seg import seg_bytes

    scan = read_dicom_folder(_dicom_folder(split_files(data), workdir), ["t1"])
    labels = np.zeros(scan.shape[1:] if len(scan.shape) == 4 else scan.shape, dtype=np.uint8)
    labels.flat[0] = 1
    seg_bytes(scan, labels, _manifest(), {"software": "edge-infer fuzz", "model": "fuzz", "model_version": "1",
                                          "model_sha256": "0" * 64})


_MANIFEST: list = []


def _manifest():
    """The bundled default model's manifest (labels for the SEG)."""
    if not _MANIFEST:
        from edge_infer.manifest import load_manifest

        _MANIFEST.append(load_manifest(Path(__file__).resolve().parents[2] / "edge_infer" / "models" / "default"))
    return _MANIFEST[0]


# -- manifests, board profiles, node configuration --------------------------------------------------
#: an ONNX file the manifest seeds may name (its sha256 is what they pin)
MODEL_BYTES = b"\x08\x08"


def run_manifest(data: bytes, workdir: Path) -> None:
    """``model.json`` through :func:`~edge_infer.manifest.load_manifest`, then every artifact checked."""
    from edge_infer.manifest import check_artifact, load_manifest

    folder = _fresh(workdir, "model")
    (folder / "model.onnx").write_bytes(MODEL_BYTES)
    (folder / "model.json").write_bytes(data)
    manifest = load_manifest(folder)
    for artifact in manifest.artifacts:
        check_artifact(manifest, artifact)


def run_profile(data: bytes, workdir: Path) -> None:
    """A board profile TOML through :func:`~edge_infer.boards.load_profile_file`, written as
    ``NAME.toml`` after its ``name`` field (the loader checks they agree)."""
    from edge_infer.boards import load_profile_file

    named = re.search(rb'^name\s*=\s*"([A-Za-z0-9_-]{1,64})"', data, flags=re.M)
    path = _fresh(workdir, "profile") / f"{named.group(1).decode() if named else 'board'}.toml"
    path.write_bytes(data)
    if load_profile_file(path).memory_budget_mb <= 0:
        raise PropertyViolation("a loaded profile has no memory budget")


def run_node_config(data: bytes, workdir: Path) -> None:
    """A node configuration TOML through :func:`~edge_infer.node.config.load_config`."""
    from edge_infer.node.config import load_config

    path = _fresh(workdir, "config") / "node.toml"
    path.write_bytes(data)
    load_config(path)


# -- the node's receive path ------------------------------------------------------------------------
def run_node_store(data: bytes, workdir: Path) -> None:
    """A C-STORE data set as ``serve`` receives it: the first byte picks the presentation
    context's transfer syntax, the rest is the encoded data set. pynetdicom's own
    ``Event.encoded_dataset`` adds the file meta, and the node's ``StoreHandler`` checks and
    spools it (no socket). Property: a DIMSE status comes back; a success leaves the instance
    in the spool, and a refusal's reason (kept beside the quarantined copy, and logged) is one
    line without patient data."""
    from edge_infer.node.scp import STATUS_OK, TRANSFER_SYNTAXES, StoreHandler

    root = _fresh_tree(workdir / "spool")
    handler = StoreHandler(_spool(root), _audit(root), lambda key: None)
    syntax = TRANSFER_SYNTAXES[data[0] % len(TRANSFER_SYNTAXES)] if data else TRANSFER_SYNTAXES[0]
    status = handler(_store_event(data[1:], syntax))
    stored = list((root / "studies").rglob("*.dcm")) if (root / "studies").is_dir() else []
    if not isinstance(status, int) or (status == STATUS_OK) != bool(stored):
        raise PropertyViolation(f"status {status!r} with {len(stored)} instance(s) spooled")
    for reason in (root / "quarantine").glob("*.txt") if (root / "quarantine").is_dir() else ():
        check_message(reason.read_text())


def _fresh_tree(root: Path) -> Path:
    import shutil

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    return root


def _spool(root: Path):
    from edge_infer.node.spool import Spool

    return Spool(root)


def _audit(root: Path):
    from edge_infer.node.audit import AuditLog

    return AuditLog(root / "audit.jsonl")


def _store_event(dataset: bytes, syntax: str):
    """A pynetdicom C-STORE ``Event`` carrying ``dataset`` in a context of ``syntax``."""
    from pynetdicom import evt
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.events import Event
    from pynetdicom.presentation import build_context

    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = STORE_SOP_CLASS
    request.AffectedSOPInstanceUID = STORE_SOP_INSTANCE
    request.DataSet = io.BytesIO(dataset)
    context = build_context(STORE_SOP_CLASS, syntax)
    context.context_id = 1
    return Event(_Association(), evt.EVT_C_STORE, {"request": request, "context": context.as_tuple})


class _Association:
    """What an ``Event`` reads from its association (no socket)."""

    is_acceptor = True

    class acceptor:  # noqa: N801 - pynetdicom's attribute name
        ae_title = "EDGE"
        implementation_class_uid = "1.2.826.0.1.3680043.9.3811.2.1.0"
        implementation_version_name = "PYNETDICOM"

    requestor = acceptor


#: input budgets (bytes): small frames in a few files, headers, text files
_KIB = 1024
TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("nifti", ("edge_infer.nifti", "edge_infer.readers"), run_nifti, "nifti", 24 * _KIB),
    Target("nifti4d", ("edge_infer.nifti", "edge_infer.readers"), run_nifti4d, "nifti", 24 * _KIB),
    Target("brats", ("edge_infer.nifti", "edge_infer.readers"), run_brats, "nifti", 24 * _KIB),
    Target("dicom", ("edge_infer.dicom",), run_dicom, "dicom", 16 * _KIB),
    Target("dicom_series", ("edge_infer.dicom",), run_dicom_series, "dicom", 32 * _KIB),
    Target("seg", ("edge_infer.seg", "edge_infer.dicom.provenance"), run_seg, "dicom", 32 * _KIB),
    Target("manifest", ("edge_infer.manifest",), run_manifest, "manifest", 8 * _KIB),
    Target("profile", ("edge_infer.boards", "edge_infer.toml_files"), run_profile, "toml", 8 * _KIB),
    Target("node_config", ("edge_infer.node.config", "edge_infer.toml_files"), run_node_config, "toml", 8 * _KIB),
    Target("node_store", ("edge_infer.node.scp",), run_node_store, "dicom", 16 * _KIB),
)}


#: a memory-backed folder for the harnesses' files, where there is one (fsync and unlink cost nothing)
TMPFS = Path("/dev/shm")
#: the scratch folder a driver (scripts/fuzz.py) made for a harness process and removes after it
#: (libFuzzer ends the process with exit(), so the process's own atexit handlers do not run)
WORKDIR_ENV = "EDGE_INFER_FUZZ_WORKDIR"


def workdir() -> Path:
    """A scratch folder for one fuzzing process, on :data:`TMPFS` where writable (the caller removes it)."""
    memory = TMPFS if TMPFS.is_dir() and os.access(TMPFS, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="edge-infer-fuzz-", dir=memory))


def memoise_highdicom() -> None:
    """Cache highdicom's ``is_attribute_in_iod`` as the runtime's SEG writer does
    (:mod:`edge_infer.highdicom_lookup`): 60 ms of every SEG the ``seg`` harness builds."""
    from edge_infer.highdicom_lookup import memoise_iod_lookup

    memoise_iod_lookup()
