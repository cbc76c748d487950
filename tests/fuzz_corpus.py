"""Seeds, mutators and harnesses for fuzzing the readers (tests/test_fuzz.py, scripts/fuzz.py).

A harness takes one input (bytes, or a dict for structural mutations), hands it to a reader
and reports ``"loaded"`` or ``"refused"`` (an :class:`~edge_infer.errors.EdgeInferError`).
Anything else escapes as a failure, and so does a run over :data:`TIME_BOUND_S` or one whose
traced memory peak exceeds :data:`MEMORY_BOUND`, with the readers told that only
:data:`FUZZ_AVAILABLE_BYTES` of memory is free (so the volume limit they enforce is a
quarter of it). Mutators take a :class:`random.Random`, so hypothesis (``st.randoms``,
shrinkable) and the long-run script drive the same code.
"""

from __future__ import annotations

import copy
import gzip
import io
import json
import random
import signal
import struct
import sys
import tracemalloc
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from edge_infer import scan as scan_module  # noqa: E402
from edge_infer.errors import EdgeInferError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: free memory the readers are told they have while fuzzing
FUZZ_AVAILABLE_BYTES = 256 << 20
#: the traced peak one input may reach: the volume limit (a quarter of the above) times the
#: copies a reader keeps (raw + float32), with room to spare
MEMORY_BOUND = 192 << 20
#: wall seconds one input may take
TIME_BOUND_S = 10.0

INTERESTING_INTS = [0, 1, 2, 3, 4, 7, 8, 15, 16, 255, 256, 32767, 32768, 65535, 65536,
                    2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, -1, -2, -32768, -(2**31)]
INTERESTING_FLOATS = [0.0, -0.0, 1.0, -1.0, 1e-30, 1e30, 3.4e38, float("nan"), float("inf"), float("-inf"),
                      352.0, 348.0, 2.0**31]


class Hang(Exception):
    """An input ran past the per-input time bound."""


class MemoryBlowUp(Exception):
    """An input made the reader allocate more than the memory bound."""


@dataclass
class Seed:
    """A valid input and what the harness needs to know about it."""

    name: str
    data: Any
    meta: dict = field(default_factory=dict)


@dataclass
class Harness:
    """A reader under test: seeds, a mutator and a runner."""

    name: str
    seeds: Callable[[], list[Seed]]
    mutate: Callable[[random.Random, Seed], Any]
    run: Callable[[Any, Seed, Path], None]


# -- bounds ------------------------------------------------------------------------------------
@contextmanager
def time_bound(seconds: float = TIME_BOUND_S):
    """Raise :class:`Hang` in the main thread after ``seconds`` of wall time."""

    def alarm(signum, frame):
        raise Hang(f"ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@contextmanager
def memory_budget(available: int = FUZZ_AVAILABLE_BYTES):
    """Tell the readers that only ``available`` bytes are free (restored afterwards)."""
    saved = scan_module.available_memory_bytes
    scan_module.available_memory_bytes = lambda: available
    try:
        yield
    finally:
        scan_module.available_memory_bytes = saved


def run_bounded(harness: Harness, data: Any, seed: Seed, workdir: Path, trace: bool = True) -> tuple[str, int]:
    """Run one input under the time and memory bounds.

    Returns
    -------
    (outcome, peak)
        ``"loaded"`` or ``"refused"``, and the traced memory peak in bytes (0 untraced).

    Raises
    ------
    Hang, MemoryBlowUp, or whatever non-EdgeInferError the reader raised.
    """
    started = trace and not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    tracemalloc.reset_peak() if trace else None
    outcome, peak = "loaded", 0
    try:
        with memory_budget(), time_bound():
            try:
                harness.run(data, seed, workdir)
            except EdgeInferError as exc:
                text = str(exc)
                if "\n" in text.strip():
                    raise AssertionError(f"error message is not one line: {text!r}") from exc
                outcome = "refused"
        if trace:
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        if started:
            tracemalloc.stop()
    if peak > MEMORY_BOUND:
        raise MemoryBlowUp(f"traced peak {peak / 2**20:.0f} MiB is over {MEMORY_BOUND / 2**20:.0f} MiB")
    return outcome, peak


# -- byte mutations ------------------------------------------------------------------------------
def mutate_bytes(rng: random.Random, data: bytes, protect: int = 0, ops: int | None = None) -> bytes:
    """Flip bits, overwrite with interesting values, insert, delete, duplicate or truncate.

    ``protect`` bytes at the start are left alone by all but truncation (to keep a magic).
    """
    buf = bytearray(data)
    for _ in range(ops if ops is not None else rng.randint(1, 4)):
        kind = rng.choice(["flip", "flip", "byte", "int", "insert", "delete", "dup", "truncate"])
        lo = min(protect, len(buf))
        if len(buf) <= lo and kind != "insert":
            kind = "insert"
        pos = rng.randint(lo, max(lo, len(buf) - 1))
        if kind == "flip" and buf:
            buf[pos] ^= 1 << rng.randrange(8)
        elif kind == "byte" and buf:
            buf[pos] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif kind == "int" and len(buf) >= pos + 4:
            value = rng.choice(INTERESTING_INTS) & 0xFFFFFFFF
            buf[pos:pos + 4] = struct.pack(rng.choice("<>") + "I", value)
        elif kind == "insert":
            buf[pos:pos] = bytes(rng.choice([[0] * rng.randint(1, 64), [rng.randrange(256) for _ in range(rng.randint(1, 16))]]))
        elif kind == "delete":
            del buf[pos:pos + rng.randint(1, 64)]
        elif kind == "dup":
            n = rng.randint(1, 256)
            buf[pos:pos] = buf[pos:pos + n]
        elif kind == "truncate":
            del buf[rng.randint(0, len(buf)):]
    return bytes(buf)


# -- NIfTI -------------------------------------------------------------------------------------------
#: field -> (offset, struct format, count) in NIfTI-1 and NIfTI-2 headers
NIFTI1_FIELDS = {"dim": (40, "h", 8), "datatype": (70, "h", 1), "bitpix": (72, "h", 1), "pixdim": (76, "f", 8),
                 "vox_offset": (108, "f", 1), "scl_slope": (112, "f", 1), "scl_inter": (116, "f", 1),
                 "qform_code": (252, "h", 1), "sform_code": (254, "h", 1), "quatern": (256, "f", 6),
                 "srow": (280, "f", 12), "extension": (348, "B", 4), "esize": (352, "i", 1)}
NIFTI2_FIELDS = {"dim": (16, "q", 8), "datatype": (12, "h", 1), "bitpix": (14, "h", 1), "pixdim": (104, "d", 8),
                 "vox_offset": (168, "q", 1), "scl_slope": (176, "d", 1), "scl_inter": (184, "d", 1),
                 "qform_code": (344, "i", 1), "sform_code": (348, "i", 1), "quatern": (352, "d", 6),
                 "srow": (400, "d", 12), "extension": (540, "B", 4), "esize": (544, "i", 1)}
NIFTI_DATATYPES = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 255, 9999, -1]


def nifti_endian(raw: bytes) -> tuple[str, dict] | None:
    """The byte order and field table of a raw (uncompressed) NIfTI-1/2 file, else None."""
    for e in "<>":
        if len(raw) >= 4:
            size = struct.unpack(e + "i", raw[:4])[0]
            if size == 348:
                return e, NIFTI1_FIELDS
            if size == 540:
                return e, NIFTI2_FIELDS
    return None


def set_nifti_field(raw: bytes, name: str, index: int, value) -> bytes:
    """``raw`` with element ``index`` of header field ``name`` set to ``value`` (clipped to its type)."""
    found = nifti_endian(raw)
    if found is None:
        return raw
    endian, table = found
    offset, fmt, count = table[name]
    at = offset + struct.calcsize(fmt) * (index % count)
    if at + struct.calcsize(fmt) > len(raw):
        return raw
    if fmt in "fd":
        packed = struct.pack(endian + fmt, float(value)) if abs(float(value)) < 3.4e38 or fmt == "d" or not np.isfinite(value) else struct.pack(endian + fmt, float("inf"))
    else:
        bits = struct.calcsize(fmt) * 8
        lo, hi = (0, 2**bits - 1) if fmt == "B" else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        packed = struct.pack(endian + fmt, int(min(max(int(value), lo), hi)))
    return raw[:at] + packed + raw[at + len(packed):]


def mutate_nifti_header(rng: random.Random, raw: bytes) -> bytes:
    """Set one to three header fields to hostile values."""
    for _ in range(rng.randint(1, 3)):
        name = rng.choice(["dim", "dim", "dim", "datatype", "bitpix", "pixdim", "vox_offset", "vox_offset",
                           "scl_slope", "scl_inter", "qform_code", "sform_code", "quatern", "srow",
                           "extension", "esize"])
        if name in ("pixdim", "scl_slope", "scl_inter", "quatern", "srow"):
            value = rng.choice(INTERESTING_FLOATS)
        elif name == "datatype":
            value = rng.choice(NIFTI_DATATYPES)
        elif name == "vox_offset":
            value = rng.choice([0, 348, 352, 368, len(raw), len(raw) + 1, 2**31 - 1, 2**40, -1, 1 << 20])
        elif name == "dim":
            value = rng.choice(INTERESTING_INTS + [rng.randint(-5, 300)])
        else:
            value = rng.choice(INTERESTING_INTS)
        raw = set_nifti_field(raw, name, rng.randrange(8), value)
    return raw


def mutate_nifti(rng: random.Random, seed: Seed) -> bytes:
    """Header field changes and/or byte mutations of a NIfTI seed; gzipped seeds stay gzipped
    (or have their compressed bytes damaged)."""
    gz = seed.meta.get("gz", False)
    raw = gzip.decompress(seed.data) if gz else seed.data
    choice = rng.random()
    if choice < 0.5:
        raw = mutate_nifti_header(rng, raw)
    if choice >= 0.35:
        raw = mutate_bytes(rng, raw)
    if not gz:
        return raw
    packed = gzip.compress(raw, compresslevel=1, mtime=0)
    return mutate_bytes(rng, packed, protect=2, ops=1) if rng.random() < 0.15 else packed


@lru_cache(maxsize=1)
def nifti_seeds() -> list[Seed]:
    """Small phantom files (3D, 4D, scaled, with an extension, NIfTI-2) and nibabel's test files."""
    import nibabel as nib

    seeds = []
    rng = np.random.default_rng(3)
    aff = np.diag([1.0, 1.2, 2.0, 1.0])

    def add(name: str, img, gz: bool, channels: int) -> None:
        raw = img.to_bytes()
        data = gzip.compress(raw, compresslevel=1, mtime=0) if gz else raw
        seeds.append(Seed(name, data, {"gz": gz, "channels": channels}))

    vol = rng.normal(100, 20, (8, 7, 5)).astype(np.float32)
    add("phantom3d.nii", nib.Nifti1Image(vol, aff), False, 1)
    add("phantom3d.nii.gz", nib.Nifti1Image(vol, aff), True, 1)
    add("phantom4d.nii.gz", nib.Nifti1Image(rng.integers(0, 500, (8, 7, 5, 4)).astype(np.int16), aff), True, 4)
    scaled = nib.Nifti1Image(rng.integers(0, 255, (6, 6, 4)).astype(np.uint8), aff)
    scaled.header.set_slope_inter(0.5, 10.0)
    add("scaled_uint8.nii", scaled, False, 1)
    ext = nib.Nifti1Image(vol, aff)
    ext.header.extensions.append(nib.nifti1.Nifti1Extension(6, b'{"comment": "fuzz seed"}'))
    add("extension.nii", ext, False, 1)
    add("extension.nii.gz", ext, True, 1)
    add("nifti2.nii", nib.Nifti2Image(vol, aff), False, 1)
    data_dir = Path(nib.__file__).parent / "tests" / "data"
    for name in ("anatomical.nii", "example4d.nii.gz", "example_nifti2.nii.gz", "functional.nii", "standard.nii.gz"):
        p = data_dir / name
        if p.is_file() and p.stat().st_size < 400_000:
            img = nib.load(p)
            channels = img.shape[3] if len(img.shape) == 4 else 1
            seeds.append(Seed("nibabel:" + name, p.read_bytes(), {"gz": name.endswith(".gz"), "channels": channels}))
    return seeds


def run_nifti(data: bytes, seed: Seed, workdir: Path) -> None:
    """Write ``data`` as one NIfTI file and read it with :func:`edge_infer.readers.read_scan`."""
    from edge_infer.readers import read_scan

    path = workdir / ("case_t1.nii.gz" if seed.meta.get("gz") else "case_t1.nii")
    path.write_bytes(data)
    channels = seed.meta.get("channels", 1)
    modalities = ("t1",) if channels == 1 else ("t1", "t1ce", "t2", "flair", "m5", "m6", "m7", "m8")[:channels]
    if channels > 8:
        modalities = tuple(f"m{i}" for i in range(channels))
    scan = read_scan([path], modalities)
    assert scan.data.dtype == np.float32 and np.isfinite(scan.data).all()


# -- DICOM ------------------------------------------------------------------------------------------
SYNTAXES = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
            "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
            "1.2.3.4", ""]


def dataset_bytes(ds) -> bytes:
    """Serialise a pydicom dataset as a Part 10 file, as its own transfer syntax says."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def meta_end(raw: bytes) -> int:
    """Offset where the dataset starts after the file meta group (uses the group length)."""
    if len(raw) >= 144 and raw[132:136] == b"\x02\x00\x00\x00":
        return 144 + struct.unpack("<I", raw[140:144])[0]
    return 132


def with_transfer_syntax(raw: bytes, uid: str) -> bytes:
    """``raw`` with its file meta rewritten to claim transfer syntax ``uid``; the dataset's bytes
    are not re-encoded (a mismatch, as a buggy or hostile sender makes)."""
    import pydicom
    from pydicom.filewriter import write_file_meta_info
    from pydicom.filebase import DicomBytesIO

    meta = pydicom.dcmread(io.BytesIO(raw), force=True).file_meta
    meta.TransferSyntaxUID = uid
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    write_file_meta_info(out, meta, enforce_standard=False)
    return raw[:128] + b"DICM" + out.getvalue() + raw[meta_end(raw):]


def mutate_dicom_header(rng: random.Random, raw: bytes) -> bytes:
    """Change Rows/Columns/BitsAllocated/NumberOfFrames and friends, or the transfer syntax."""
    import pydicom

    try:
        if rng.random() < 0.25:
            return with_transfer_syntax(raw, rng.choice(SYNTAXES))
        ds = pydicom.dcmread(io.BytesIO(raw), force=True)
    except Exception:  # the seed's meta cannot be re-made: mutate the bytes instead
        return mutate_bytes(rng, raw, protect=132)
    for _ in range(rng.randint(1, 3)):
        try:
            _set_hostile_field(rng, ds)
        except Exception:  # pydicom refuses to hold the value: try another field
            continue
    try:
        return dataset_bytes(ds)
    except Exception:  # pydicom cannot encode the hostile value: mutate the bytes instead
        return mutate_bytes(rng, raw, protect=132)


def _set_hostile_field(rng: random.Random, ds) -> None:
    """Set one image, geometry or identity field of ``ds`` to a hostile value."""
    kind = rng.choice(["Rows", "Columns", "BitsAllocated", "BitsStored", "NumberOfFrames", "SamplesPerPixel",
                       "PixelRepresentation", "PixelData", "ImagePositionPatient", "PixelSpacing",
                       "ImageOrientationPatient", "RescaleSlope", "SeriesInstanceUID", "delete"])
    if kind in ("Rows", "Columns"):
        setattr(ds, kind, rng.choice([0, 1, 2, 255, 4096, 32767, 65535, rng.randint(0, 600)]))
    elif kind in ("BitsAllocated", "BitsStored"):
        setattr(ds, kind, rng.choice([0, 1, 7, 8, 12, 16, 24, 32, 64, 255]))
    elif kind == "NumberOfFrames":
        ds.NumberOfFrames = rng.choice(["0", "1", "2", "-1", "4294967296", "99999999999", "1e9"])
    elif kind in ("SamplesPerPixel", "PixelRepresentation"):
        setattr(ds, kind, rng.choice([0, 1, 3, 4, 65535]))
    elif kind == "PixelData" and "PixelData" in ds:
        pd = bytes(ds.PixelData)
        ds.PixelData = rng.choice([pd[: rng.randint(0, len(pd))], pd + bytes(rng.randint(1, 4096)), pd * 3, b""])
    elif kind in ("ImagePositionPatient", "PixelSpacing", "ImageOrientationPatient"):
        n = {"ImagePositionPatient": 3, "PixelSpacing": 2, "ImageOrientationPatient": 6}[kind]
        vals = [rng.choice(["0", "1", "-1", "nan", "inf", "1e308", "abc", ""]) for _ in range(rng.choice([n, n, 1, n + 1]))]
        ds[kind].value = "\\".join(vals)
    elif kind == "RescaleSlope":
        ds.RescaleSlope = rng.choice(["0", "nan", "inf", "-1", "1e308"])
    elif kind == "SeriesInstanceUID":
        ds.SeriesInstanceUID = rng.choice(["", "../../etc/passwd", "/abs/path", "1.2\x00.3", "9" * 64])
    elif kind == "delete":
        keys = [e.keyword for e in ds if e.keyword]
        if keys:
            delattr(ds, rng.choice(keys))


def mutate_dicom(rng: random.Random, seed: Seed) -> list[bytes]:
    """Mutate the first file of a two-file series seed (header fields and/or bytes)."""
    files = list(seed.data)
    raw = files[0]
    choice = rng.random()
    if choice < 0.5:
        raw = mutate_dicom_header(rng, raw)
    if choice >= 0.35:
        raw = mutate_bytes(rng, raw, protect=132 if rng.random() < 0.8 else 0)
    files[0] = raw
    return files


def series_pair(ds, description: str = "AX T1") -> list[bytes]:
    """Two files of one axial series made from dataset ``ds`` (geometry and UIDs set)."""
    from pydicom.uid import generate_uid

    ds = copy.deepcopy(ds)
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[description, "series"])
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[description, "study"])
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[description, "for"])
    ds.SeriesDescription = description
    ds.Modality = "MR"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    for tag in ("NumberOfFrames", "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        if tag in ds and tag != "NumberOfFrames":
            delattr(ds, tag)
    out = []
    for k in range(2):
        ds.ImagePositionPatient = [0, 0, 2 * k]
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[description, str(k)])
        if "file_meta" in dir(ds) and ds.file_meta is not None:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(dataset_bytes(ds))
    return out


@lru_cache(maxsize=1)
def dicom_seeds() -> list[Seed]:
    """Two-file series from the repository's factory (several syntaxes) and pydicom's test files."""
    import tempfile

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian, RLELossless

    from dicom_factory import write_dicom_series

    seeds = []
    rng = np.random.default_rng(5)
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    vol = rng.integers(0, 800, (6, 5, 2)).astype(np.int16)
    with tempfile.TemporaryDirectory() as tmp:
        for syntax in (ImplicitVRLittleEndian, "1.2.840.10008.1.2.1", ExplicitVRBigEndian, RLELossless):
            folder = Path(tmp) / syntax
            files = write_dicom_series(folder, vol, aff, "AX T1", transfer_syntax=syntax, shuffle=False,
                                       rescale=(2.0, -5.0))
            seeds.append(Seed(f"factory:{syntax}", [p.read_bytes() for p in files]))
        files = write_dicom_series(Path(tmp) / "u8", vol.clip(0, 255).astype(np.uint8), aff, "AX T1", dtype=np.uint8,
                                   shuffle=False)
        seeds.append(Seed("factory:uint8", [p.read_bytes() for p in files]))
        deflated = []
        for p in files:
            ds = pydicom.dcmread(p)
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
            deflated.append(dataset_bytes(ds))
        seeds.append(Seed("factory:deflated", deflated))
    for name in ("MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "image_dfl.dcm", "MR_small_bigendian.dcm",
                 "MR_small_implicit.dcm", "emri_small.dcm", "JPEG2000.dcm", "SC_rgb_small_odd.dcm", "rtplan.dcm"):
        try:
            ds = pydicom.dcmread(get_testdata_file(name))
            seeds.append(Seed("pydicom:" + name, series_pair(ds)))
        except Exception:  # a test file this pydicom does not ship, or one that cannot be re-made
            continue
    return seeds


def run_dicom(files: list[bytes], seed: Seed, workdir: Path) -> None:
    """Write the files into a folder and read it with :func:`edge_infer.dicom.read_dicom_folder`."""
    from edge_infer.dicom import read_dicom_folder

    folder = workdir / "dicom"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for k, data in enumerate(files):
        (folder / f"slice{k}.dcm").write_bytes(data)
    scan = read_dicom_folder(folder, ["t1"])
    assert scan.data.dtype == np.float32 and np.isfinite(scan.data).all()


# -- JSON / TOML structure --------------------------------------------------------------------------
def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A hostile JSON/TOML-able value: wrong types, huge, NaN, deep or long."""
    choice = rng.randrange(14)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice(INTERESTING_INTS + [10**30, 10**400, -(10**400)])
    if choice == 3:
        return rng.choice(INTERESTING_FLOATS)
    if choice == 4:
        return rng.choice(["", "../../etc/passwd", "/etc/passwd", "model\x00.onnx", "x" * 5000, "RAS", "onnx",
                           "fp32", "t1", "NCHW", "sigmoid", "zscore_nonzero", "0" * 64, "é∂", "model.onnx"])
    if choice == 5 and depth < 3:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if choice == 6 and depth < 3:
        return {rng.choice(["a", "value", "name", "region", "file"]): random_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    if choice == 7:
        return [[[[]]]]
    return rng.choice([0, 1, 0.5, "x", [], {}, [1, 2, 3], [1.0, 1.0, 1.0], 16, 3])


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def mutate_structure(rng: random.Random, doc: Any) -> Any:
    """Delete, replace, retype, duplicate or nest values anywhere in a JSON-like document."""
    doc = copy.deepcopy(doc)
    for _ in range(rng.randint(1, 3)):
        paths = [p for p in _paths(doc) if p]
        if not paths:
            return doc
        path = rng.choice(paths)
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        kind = rng.choice(["delete", "replace", "replace", "replace", "wrap", "extend", "newkey"])
        if kind == "delete":
            del parent[key]
        elif kind == "replace":
            parent[key] = random_value(rng)
        elif kind == "wrap":
            parent[key] = [parent[key]] if rng.random() < 0.5 else {"value": parent[key]}
        elif kind == "extend" and isinstance(parent[key], list):
            parent[key] = parent[key] + [random_value(rng)] * rng.randint(1, 3)
        elif kind == "newkey" and isinstance(parent, dict):
            parent[rng.choice(["extra", "tile", "slice_axis", "placeholder", "providers"])] = random_value(rng)
    return doc


TEXT_BOMBS = ["[" * 5000 + "]" * 5000, "9" * 5000, '"\\ud800"', "\ufeff", "{" * 3000, "1e999999", "-" * 100]


def mutate_text(rng: random.Random, text: str) -> bytes:
    """Byte mutations of a JSON/TOML text, sometimes with a nesting or number bomb spliced in."""
    data = text.encode("utf-8")
    if rng.random() < 0.3:
        pos = rng.randint(0, len(data))
        data = data[:pos] + rng.choice(TEXT_BOMBS).encode("utf-8") + data[pos:]
    if rng.random() < 0.2:
        key = rng.choice([b"= ", b": "])
        pos = data.find(key, rng.randint(0, max(0, len(data) - 1)))
        if pos >= 0:
            bomb = rng.choice([b"[" * 3000 + b"1" + b"]" * 3000, b"9" * 6000, b"{a=" * 2000 + b"1" + b"}" * 2000])
            data = data[:pos + len(key)] + bomb + b"\n" + data[pos + len(key):]
    return mutate_bytes(rng, data) if rng.random() < 0.7 else data


# -- manifests ---------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def manifest_seeds() -> list[Seed]:
    """The bundled default manifest and the test factory's 2D and 3D manifests."""
    import tempfile

    from model_factory import write_model

    seeds = []
    bundled = ROOT / "edge_infer" / "models" / "default" / "model.json"
    if bundled.is_file():
        seeds.append(Seed("bundled:default", json.loads(bundled.read_text())))
    with tempfile.TemporaryDirectory() as tmp:
        for name, kwargs in (("factory:2d", {}), ("factory:3d", {"dims": 3, "tile": (16, 16, 16)})):
            folder = write_model(Path(tmp) / name.replace(":", "_"), **kwargs)
            seeds.append(Seed(name, json.loads((folder / "model.json").read_text()),
                              {"onnx": (folder / "model.onnx").read_bytes()}))
    return seeds


def mutate_manifest(rng: random.Random, seed: Seed) -> Any:
    """Half structural (a dict for parse_manifest), half textual (bytes for load_manifest)."""
    if rng.random() < 0.5:
        return mutate_structure(rng, seed.data)
    return mutate_text(rng, json.dumps(seed.data, indent=2))


def run_manifest(data: Any, seed: Seed, workdir: Path) -> None:
    """parse_manifest (dict) or load_manifest (bytes), then check every artifact it names."""
    from edge_infer.manifest import check_artifact, load_manifest, parse_manifest

    folder = workdir / "model"
    folder.mkdir(exist_ok=True)
    (folder / "model.onnx").write_bytes(seed.meta.get("onnx", b"\x08\x08"))
    if isinstance(data, bytes):
        (folder / "model.json").write_bytes(data)
        m = load_manifest(folder)
    else:
        m = parse_manifest(data, folder=folder)
    for art in m.artifacts:
        check_artifact(m, art)


# -- board profiles ----------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def profile_seeds() -> list[Seed]:
    """The shipped board profiles (TOML text and parsed)."""
    import tomllib

    seeds = []
    for p in sorted((ROOT / "firmware_profiles").glob("*.toml")):
        text = p.read_text(encoding="utf-8")
        seeds.append(Seed(p.stem, tomllib.loads(text), {"text": text}))
    return seeds


def mutate_profile(rng: random.Random, seed: Seed) -> Any:
    """Half structural (a dict for parse_profile), half textual (bytes for load_profile_file)."""
    if rng.random() < 0.5:
        return mutate_structure(rng, seed.data)
    return mutate_text(rng, seed.meta["text"])


def run_profile(data: Any, seed: Seed, workdir: Path) -> None:
    """parse_profile (dict) or load_profile_file (bytes written as ``<name>.toml``)."""
    from edge_infer.boards import load_profile_file, parse_profile

    if isinstance(data, bytes):
        path = workdir / f"{seed.name}.toml"
        path.write_bytes(data)
        prof = load_profile_file(path)
    else:
        prof = parse_profile(data, f"{seed.name}.toml")
    assert prof.memory_budget_mb > 0


HARNESSES = {
    "nifti": Harness("nifti", nifti_seeds, mutate_nifti, run_nifti),
    "dicom": Harness("dicom", dicom_seeds, mutate_dicom, run_dicom),
    "manifest": Harness("manifest", manifest_seeds, mutate_manifest, run_manifest),
    "profile": Harness("profile", profile_seeds, mutate_profile, run_profile),
}


def one_case(harness: Harness, rng: random.Random, workdir: Path, trace: bool = True) -> tuple[str, int]:
    """Pick a seed, mutate it, run it bounded (see :func:`run_bounded`)."""
    seeds = harness.seeds()
    seed = seeds[rng.randrange(len(seeds))]
    return run_bounded(harness, harness.mutate(rng, seed), seed, workdir, trace)
