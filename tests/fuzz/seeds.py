"""Write the seed corpora from real files, one folder per harness.

Usage::

    python -m fuzz.seeds OUT_DIR          # then: scripts/fuzz.py --merge-seeds OUT_DIR

Seeds: nibabel's test data and the phantoms of ``tests/fuzz_corpus.py`` (NIfTI); pydicom's
and pydicom-data's test files and ``tests/dicom_factory.py`` series (DICOM, SEG, the node's
C-STORE data sets); the bundled and factory manifests; the shipped board profiles; the node
configuration example. Every DICOM seed carries :data:`fuzz.targets.PATIENT_MARKERS` in its
patient fields, so a message that shows them is caught. The merge keeps the seeds that add
coverage (libFuzzer ``-merge=1``) in ``tests/fuzz/corpus/HARNESS``.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import sys
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz.targets import SEP, STORE_SOP_INSTANCE  # noqa: E402

#: seed files larger than this are left out (the committed corpus stays small)
MAX_SEED_BYTES = 256 << 10
NODE_CONFIG = """ae_title = "EDGE_INFER"
port = 11112
bind = "127.0.0.1"
allowed_aes = ["SCANNER1", "PACS"]
max_associations = 4
max_pdu = 65536
acse_timeout = 30
dimse_timeout = 30
network_timeout = 60
spool = "/var/lib/edge-infer"
idle_seconds = 10
model = "default"
backend = "onnx"
threads = 0
nifti = false
retry_initial = 2
retry_max = 300

[destination]
ae_title = "PACS"
host = "127.0.0.1"
port = 104

[series_rules]
t1 = ["T1.*MPRAGE", "T1"]
flair = ["FLAIR"]
"""


def _mark(ds):
    ds.PatientName = "FUZZ^MARKER"
    ds.PatientID = "FUZZMARKER"
    return ds


def nifti_seeds() -> Iterator[tuple[str, bytes, int]]:
    """(name, bytes, channels) of the NIfTI phantoms and nibabel's test files."""
    import fuzz_corpus as fc

    for seed in fc.nifti_seeds():
        yield seed.name, seed.data, seed.meta.get("channels", 1)


def dicom_files() -> Iterator[tuple[str, bytes]]:
    """Single DICOM files: pydicom's and pydicom-data's test files (multi-frame included)."""
    import pydicom
    from pydicom.data import get_testdata_file

    names = ("MR_small.dcm", "CT_small.dcm", "MR_small_RLE.dcm", "image_dfl.dcm", "MR_small_bigendian.dcm",
             "MR_small_implicit.dcm", "emri_small.dcm", "emri_small_RLE.dcm", "emri_small_big_endian.dcm",
             "JPEG2000.dcm", "MR_small_jp2klossless.dcm", "SC_rgb_small_odd.dcm", "MR2_J2KI.dcm",
             "SC_rgb_rle.dcm", "JPEG-LL.dcm", "emri_small_jpeg_2k_lossless.dcm", "693_J2KR.dcm")
    for name in names:
        try:
            path = get_testdata_file(name)
            if path is None or Path(path).stat().st_size > MAX_SEED_BYTES:
                continue
            ds = _mark(pydicom.dcmread(path))
            yield name, _part10(ds)
        except Exception:  # a test file this pydicom does not ship or cannot re-encode
            continue


def multiframe_files() -> Iterator[tuple[str, bytes]]:
    """Legacy Converted Enhanced MR files (highdicom) made from factory series of 3 and 4 slices."""
    import tempfile

    import numpy as np
    import pydicom

    from dicom_factory import write_dicom_series, write_multiframe_series

    rng = np.random.default_rng(18)
    with tempfile.TemporaryDirectory() as tmp:
        for slices in (3, 4):
            vol = rng.integers(0, 800, (6, 5, slices)).astype(np.int16)
            files = write_dicom_series(Path(tmp) / f"s{slices}", vol, np.diag([1.0, 1.0, 2.0, 1.0]), "AX T1",
                                       shuffle=False)
            path = write_multiframe_series(Path(tmp) / f"mf{slices}", files)
            yield f"factory:multiframe-{slices}", _part10(_mark(pydicom.dcmread(path)))


def _part10(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def dicom_series() -> Iterator[tuple[str, bytes]]:
    """Series of two to four files joined with :data:`SEP` (factory syntaxes, pydicom files)."""
    import tempfile

    import numpy as np
    import pydicom

    import fuzz_corpus as fc
    from dicom_factory import write_dicom_series

    for seed in fc.dicom_seeds():
        yield seed.name, SEP.join(_part10(_mark(pydicom.dcmread(io.BytesIO(f), force=True))) for f in seed.data)
    rng = np.random.default_rng(18)
    with tempfile.TemporaryDirectory() as tmp:
        vol = rng.integers(0, 800, (6, 5, 4)).astype(np.int16)
        files = write_dicom_series(Path(tmp) / "four", vol, np.diag([0.9, 0.9, 3.0, 1.0]), "AX FLAIR", shuffle=False)
        yield "factory:four-slices", SEP.join(_part10(_mark(pydicom.dcmread(p))) for p in files)


def store_datasets() -> Iterator[tuple[str, bytes]]:
    """C-STORE data sets: a syntax byte (index into the node's TRANSFER_SYNTAXES) and the encoded data set."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from edge_infer.node.scp import TRANSFER_SYNTAXES

    for name in ("MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm",
                 "MR_small_jp2klossless.dcm", "emri_small.dcm"):
        try:
            ds = _mark(pydicom.dcmread(get_testdata_file(name)))
        except Exception:  # not shipped by this pydicom
            continue
        syntax = str(ds.file_meta.TransferSyntaxUID)
        if syntax not in TRANSFER_SYNTAXES:
            continue
        ds.SOPInstanceUID = STORE_SOP_INSTANCE
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        del ds.file_meta
        out = DicomBytesIO()
        out.is_little_endian = syntax != "1.2.840.10008.1.2.2"
        out.is_implicit_VR = syntax == "1.2.840.10008.1.2"
        write_dataset(out, ds)
        yield name, bytes([TRANSFER_SYNTAXES.index(syntax)]) + out.getvalue()


def manifests() -> Iterator[tuple[str, bytes]]:
    """The bundled and factory manifests, their artifact pinned to ``fuzz.targets.MODEL_BYTES``."""
    import fuzz_corpus as fc
    from fuzz.targets import MODEL_BYTES

    digest = hashlib.sha256(MODEL_BYTES).hexdigest()
    for seed in fc.manifest_seeds():
        doc = copy.deepcopy(seed.data)
        for art in doc.get("artifacts", {}).values() if isinstance(doc.get("artifacts"), dict) else doc.get("artifacts", []):
            if isinstance(art, dict) and "sha256" in art:
                art["sha256"] = digest
                art["file"] = "model.onnx"
        yield seed.name, json.dumps(doc, indent=2).encode()


def profiles() -> Iterator[tuple[str, bytes]]:
    """The shipped board profiles."""
    for p in sorted((ROOT / "firmware_profiles").glob("*.toml")):
        yield p.stem, p.read_bytes()


def seeds_for(harness: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) seeds of one harness."""
    if harness in ("nifti", "brats"):
        yield from ((n, d) for n, d, c in nifti_seeds() if c == 1)
    elif harness == "nifti4d":
        yield from ((n, d) for n, d, c in nifti_seeds() if c > 1)
        yield from ((n, d) for n, d, c in nifti_seeds() if c == 1)
    elif harness == "dicom":
        yield from dicom_files()
        yield from multiframe_files()
    elif harness in ("dicom_series", "seg"):
        yield from dicom_series()
        yield from multiframe_files()
    elif harness == "node_store":
        yield from store_datasets()
    elif harness == "manifest":
        yield from manifests()
    elif harness == "profile":
        yield from profiles()
    elif harness == "node_config":
        yield "example", NODE_CONFIG.encode()
        yield "minimal", b'spool = "/tmp/spool"\n'


def write_seeds(out: Path, harnesses: list[str]) -> dict[str, int]:
    """Write each harness's seeds to ``out/HARNESS/<sha1>``; return how many per harness."""
    counts = {}
    for harness in harnesses:
        folder = out / harness
        folder.mkdir(parents=True, exist_ok=True)
        n = 0
        for _name, data in seeds_for(harness):
            if len(data) <= MAX_SEED_BYTES * 4:
                (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)
                n += 1
        counts[harness] = n
    return counts


if __name__ == "__main__":
    import warnings

    from fuzz.targets import TARGETS

    warnings.simplefilter("ignore")
    print(write_seeds(Path(sys.argv[1]), sys.argv[2:] or list(TARGETS)))
