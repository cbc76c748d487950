"""Walk a folder and read the header of each DICOM image file (no pixels), one record per frame."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.uid import UID

from ..errors import ScanError
from .guards import READ_ERRORS, CappedReader, HeaderProblem, check_deflate_bomb, check_pixel_bytes, reason

_NON_IMAGE_MODALITIES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "REG", "DOC"}
#: what :func:`_dicom_preamble` returns for a dataset without the 128-byte preamble
_NO_PREAMBLE = b""
_VRS = {vr.encode() for vr in ("AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM "
                               "UC UI UL UN UR US UT UV").split()}
#: transfer syntax of a dataset without file meta information, by (implicit VR, little endian)
_BARE_SYNTAX = {(True, True): "1.2.840.10008.1.2", (False, True): "1.2.840.10008.1.2.1",
                (False, False): "1.2.840.10008.1.2.2"}


@dataclass(frozen=True)
class Instance:
    """The header fields of one image file (no pixels, no patient data)."""

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    frame_of_reference_uid: str
    description: str
    protocol: str
    transfer_syntax: str
    rows: int = 0
    columns: int = 0
    bits_allocated: int = 0
    samples_per_pixel: int = 1
    frames: int = 1                  # frames in the file (Enhanced / Legacy Converted Enhanced MR: > 1)
    frame: int = 0                   # this record's frame in the file (0-based)
    position: tuple[float, ...] = ()
    orientation: tuple[float, ...] = ()
    pixel_spacing: tuple[float, ...] = ()
    slope: float = 1.0
    intercept: float = 0.0
    pixel_bytes: int = -1
    encapsulated: bool = False
    part10: bool = True              # False: a dataset without the 128-byte preamble and DICM prefix
    problem: str = ""


#: what :func:`parse_file` returns: the 128-byte preamble (None: not DICOM) and the header records
Parsed = tuple[bytes | None, list[Instance]]


def scan_folder(folder: Path, parse: Callable[[Path], Parsed] | None = None) -> tuple[list[Instance], list[str]]:
    """Header records of the image files under ``folder``, and warnings; each file goes through
    ``parse`` (:func:`parse_file`, or a cache of its results)."""
    if not folder.is_dir():
        raise ScanError(f"{folder} is not a folder; give the folder that holds the DICOM series")
    parse = parse or parse_file
    instances, dicom_files, executables = [], 0, 0
    for path in candidate_files(folder):
        preamble, records = parse(path)
        if preamble is None:
            continue
        dicom_files += 1
        executables += preamble[:2] == b"MZ" or preamble[:4] == b"\x7fELF"
        instances.extend(records)
    if not dicom_files:
        raise ScanError(
            f"no DICOM or NIfTI files found in {folder}; give a DICOM series folder, a BraTS case "
            "folder or NIfTI files"
        )
    if not instances:
        raise ScanError(
            f"found {dicom_files} DICOM files in {folder} but no images (only DICOMDIR, reports "
            "or other objects); give the folder that holds the image series"
        )
    warnings = []
    if executables:
        warnings.append(
            f"{executables} DICOM file(s) have an executable preamble (MZ/ELF, CVE-2019-11687) and "
            "may be polyglot files; check where they came from"
        )
    return instances, warnings


def parse_file(path: Path) -> Parsed:
    """The preamble of a file (None if it is not DICOM) and its header records (:func:`read_header`)."""
    preamble = _dicom_preamble(path)
    if preamble is None:
        return None, []
    return preamble, read_header(path, part10=preamble != _NO_PREAMBLE)


def candidate_files(folder: Path) -> Iterator[Path]:
    """Regular files under ``folder`` in sorted order, skipping hidden names and symlinked folders."""

    def fail(err: OSError) -> None:
        raise ScanError(f"cannot list folder {err.filename}: {err.strerror}; check its permissions") from err

    for root, dirs, files in os.walk(folder, onerror=fail, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and path.is_file():
                yield path


def has_dicom_files(folder: Path) -> bool:
    """Whether any file under ``folder`` is DICOM (with or without the 128-byte preamble)."""
    return any(_dicom_preamble(path) is not None for path in candidate_files(folder))


def _dicom_preamble(path: Path) -> bytes | None:
    """The 128-byte preamble if the file has the DICM prefix, :data:`_NO_PREAMBLE` if it is a
    dataset without one (:func:`looks_like_bare_dataset`), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as exc:
        raise ScanError(f"cannot read {path.name}: {exc.strerror}; check its permissions") from exc
    if len(head) == 132 and head[128:132] == b"DICM":
        return head[:128]
    return _NO_PREAMBLE if looks_like_bare_dataset(head) else None


def looks_like_bare_dataset(head: bytes) -> bool:
    """Whether ``head`` starts like a DICOM dataset written without the Part 10 preamble.

    Older writers and some PACS exports omit the 128-byte preamble and ``DICM`` (PS3.10
    7.1). Such a file is read (pydicom ``force=True``) only when its first element is a
    File Meta (group 0002) or Identifying (group 0008) element with an explicit VR or a
    plausible implicit length, little endian: pydicom would otherwise parse any bytes.
    """
    if len(head) < 8 or int.from_bytes(head[:2], "little") not in (0x0002, 0x0008):
        return False
    if int.from_bytes(head[2:4], "little") > 0x0100:
        return False
    return head[4:6] in _VRS or int.from_bytes(head[4:8], "little") < 1 << 12


def read_header(path: Path, part10: bool = True) -> list[Instance]:
    """The header records of an image file, one per frame; none for non-image objects
    (DICOMDIR, SR, SEG ...). A file whose series is known but that cannot be used (truncated
    pixel data, a mosaic ...) gives one record with its problem, raised only if its series
    is used; a file whose series cannot be told is refused here."""
    try:
        with open(path, "rb") as f:
            check_deflate_bomb(f, path, 132 if part10 else 0)
            ds = pydicom.dcmread(CappedReader(f), stop_before_pixels=True, force=not part10)
            if len(ds) == 0:
                raise HeaderProblem("is truncated: it ends inside its header")
            if str(ds.get("Modality", "")).upper() in _NON_IMAGE_MODALITIES:
                return []
            if "Rows" not in ds and not UID(str(ds.get("SOPClassUID", ""))).keyword.endswith("ImageStorage"):
                return []
            try:
                syntax = _transfer_syntax(ds, part10)
                pixel_bytes = (-1, False)
                if syntax.is_transfer_syntax and not syntax.is_deflated:
                    pixel_bytes = check_pixel_bytes(f, syntax)
            except HeaderProblem as exc:
                if not text_of(ds, "SeriesInstanceUID"):
                    raise                       # its series cannot be told: refused here
                return [Instance(**_identity(path, ds, "", part10), frames=_declared_frames(ds), problem=str(exc))]
            return _instance_from_header(path, ds, str(syntax), *pixel_bytes, part10=part10)
    except HeaderProblem as exc:
        raise ScanError(f"DICOM file {path.name} {exc}; copy or export it again") from exc
    except READ_ERRORS as exc:
        raise ScanError(f"DICOM file {path.name} is corrupt ({reason(exc)}); copy or export it again") from exc


def _transfer_syntax(ds: pydicom.Dataset, part10: bool) -> UID:
    """The file's TransferSyntaxUID; for a dataset without file meta, the encoding pydicom found."""
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
    if not syntax and not part10:
        syntax = UID(_BARE_SYNTAX.get(tuple(getattr(ds, "original_encoding", ())), ""))
    if not syntax:
        raise HeaderProblem("is truncated or corrupt: its file meta information has no TransferSyntaxUID")
    return syntax


def _identity(path: Path, ds: pydicom.Dataset, syntax: str, part10: bool) -> dict[str, Any]:
    """The fields that place a file in its study and series; refused without a series."""
    identity = {
        "path": path,
        "study_uid": text_of(ds, "StudyInstanceUID"),
        "series_uid": text_of(ds, "SeriesInstanceUID"),
        "sop_uid": text_of(ds, "SOPInstanceUID"),
        "sop_class_uid": text_of(ds, "SOPClassUID"),
        "frame_of_reference_uid": text_of(ds, "FrameOfReferenceUID"),
        "description": short_text(ds, "SeriesDescription"),
        "protocol": short_text(ds, "ProtocolName"),
        "transfer_syntax": syntax,
        "part10": part10,
    }
    if not identity["series_uid"]:
        raise ScanError(
            f"DICOM image {path.name} has no SeriesInstanceUID, so it belongs to no series; remove it"
        )
    return identity


def _declared_frames(ds: pydicom.Dataset) -> int:
    """NumberOfFrames as declared, 1 when absent or malformed (for counting only)."""
    try:
        return max(_int(ds, "NumberOfFrames", 1), 1)
    except (HeaderProblem, ValueError, TypeError, OverflowError):
        return 1


def _is_mosaic(ds: pydicom.Dataset) -> bool:
    """Whether ImageType says MOSAIC (Siemens: the slices of a volume tiled in one image)."""
    value = ds.get("ImageType") or []
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else str(value).split("\\")
    return any(str(v).strip().upper() == "MOSAIC" for v in values)


MOSAIC_PROBLEM = ("is a Siemens mosaic (ImageType MOSAIC: the slices are tiled in one image), which edge-infer "
                  "does not unpack; convert the series to NIfTI (e.g. dcm2niix) and pass that")


def _instance_from_header(path: Path, ds: pydicom.Dataset, syntax: str, pixel_bytes: int = -1,
                          encapsulated: bool = False, part10: bool = True) -> list[Instance]:
    """Identity fields now; geometry fields parsed (per frame for a multi-frame image), or a
    problem kept for when the series is used."""
    identity = _identity(path, ds, syntax, part10)
    identity.update(pixel_bytes=pixel_bytes, encapsulated=encapsulated)
    if _is_mosaic(ds):
        return [Instance(**identity, frames=_declared_frames(ds), problem=MOSAIC_PROBLEM)]
    try:
        frames = _int(ds, "NumberOfFrames", 1)
        per_frame = _frame_fields(ds, frames) if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds \
            else [_plane_fields(ds, ds, ds, ds)]
        base = _image_fields(ds)
        return [Instance(**identity, **base, frames=frames, frame=i, **f) for i, f in enumerate(per_frame)]
    except HeaderProblem as exc:
        return [Instance(**identity, frames=_declared_frames(ds), problem=str(exc))]
    except (ValueError, TypeError, OverflowError) as exc:
        return [Instance(**identity, frames=_declared_frames(ds), problem=f"has a malformed value ({reason(exc)})")]


def _image_fields(ds: pydicom.Dataset) -> dict[str, Any]:
    """What every frame of an image file shares: its size and pixel format."""
    return {"rows": _int(ds, "Rows"), "columns": _int(ds, "Columns"), "bits_allocated": _int(ds, "BitsAllocated"),
                "samples_per_pixel": _int(ds, "SamplesPerPixel", 1)}


def _plane_fields(position: pydicom.Dataset, orientation: pydicom.Dataset, measures: pydicom.Dataset,
                  transform: pydicom.Dataset) -> dict[str, Any]:
    """A plane's position, orientation, pixel spacing and rescale, each from the dataset that
    holds it (the image itself, or a frame's functional group macros)."""
    fields: dict[str, Any] = {
        "position": _floats(position, "ImagePositionPatient", 3),
        "orientation": _floats(orientation, "ImageOrientationPatient", 6),
        "pixel_spacing": _floats(measures, "PixelSpacing", 2),
        "slope": _floats(transform, "RescaleSlope", 1, 1.0)[0],
        "intercept": _floats(transform, "RescaleIntercept", 1, 0.0)[0],
    }
    if fields["slope"] == 0:
        raise HeaderProblem("has RescaleSlope 0")
    if min(fields["pixel_spacing"]) <= 0:
        raise HeaderProblem(f"has a non-positive PixelSpacing {list(fields['pixel_spacing'])}")
    return fields


def _frame_fields(ds: pydicom.Dataset, frames: int) -> list[dict[str, Any]]:
    """The plane of each frame of a multi-frame image (Enhanced MR, Legacy Converted Enhanced
    MR): each functional group macro from the frame's own item, else from the shared one."""
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per) != frames:
        raise HeaderProblem(
            f"is multi-frame ({frames} frames) with {len(per)} per-frame functional groups "
            "(PerFrameFunctionalGroupsSequence), so its frames have no positions; export the series as "
            "single-frame images")
    shared_seq = ds.get("SharedFunctionalGroupsSequence") or []
    shared = shared_seq[0] if len(shared_seq) else pydicom.Dataset()

    def macro(item: pydicom.Dataset, keyword: str) -> pydicom.Dataset:
        for source in (item, shared):
            seq = source.get(keyword)
            if seq:
                return seq[0]
        return pydicom.Dataset()

    out = []
    for i, item in enumerate(per):
        try:
            out.append(_plane_fields(macro(item, "PlanePositionSequence"), macro(item, "PlaneOrientationSequence"),
                                     macro(item, "PixelMeasuresSequence"),
                                     macro(item, "PixelValueTransformationSequence")))
        except HeaderProblem as exc:
            raise HeaderProblem(f"frame {i + 1} {exc}") from None
    return out


def text_of(ds: pydicom.Dataset, keyword: str) -> str:
    return " ".join(str(ds.get(keyword, "") or "").split())


def short_text(ds: pydicom.Dataset, keyword: str, limit: int = 64) -> str:
    """A description (LO: at most 64 characters), whitespace collapsed, cut at the first control
    character: a corrupt value length swallows the elements after it (the patient's name among
    them), and the description is shown in messages and reports."""
    value = ds.get(keyword, "") or ""
    text = "\\".join(map(str, value)) if isinstance(value, MultiValue) else str(value)
    cut = next((k for k, ch in enumerate(text) if not (ch.isprintable() or ch.isspace())), len(text))
    return " ".join(text[:cut].split())[:limit]


def _int(ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, None)
    if value is None or value == "":
        if default is None:
            raise HeaderProblem(f"has no {keyword}")
        return default
    return int(value)


def _floats(ds: pydicom.Dataset, keyword: str, count: int, default: float | None = None) -> tuple[float, ...]:
    value = ds.get(keyword, None)
    if value is None or value == "":
        if default is None:
            raise HeaderProblem(f"has no {keyword}")
        return (default,) * count
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    if len(values) != count:
        raise HeaderProblem(f"has {len(values)} values in {keyword}, expected {count}")
    floats = tuple(float(v) for v in values)
    if not all(np.isfinite(floats)):
        raise HeaderProblem(f"has a non-finite {keyword} {list(floats)}")
    return floats
