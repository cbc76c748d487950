"""Read a folder of DICOM MR series into a :class:`~edge_infer.scan.Scan`.

The reader walks the folder, reads headers only, groups the files by SeriesInstanceUID, maps
series to the requested modalities by regular expressions on SeriesDescription (then
ProtocolName), orders each series' slices by position along the slice normal, checks the
geometry, and only then reads the pixels of the series it needs into one preallocated float32
array ``[C, I, J, K]`` (``I`` columns, ``J`` rows, ``K`` slices; see :func:`dicom_affine`).

Patient data never goes into ``Scan.source`` (UIDs are hashed); raw UIDs and file paths go
into ``Scan.reference["dicom"]`` for the DICOM SEG writer only.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pydicom
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.uid import UID

from .errors import GeometryError, ModalityError, ScanError, UnsupportedTransferSyntaxError
from .scan import Scan, canonical_modality, check_finite, check_is_volume, check_same_grid, check_volume_size

#: a description that says "pre-contrast" or "non-contrast" is never t1ce
_NOT_PRE = r"^(?!.*(?<![a-z])(pre|non)[-_ ]?(contrast|gd|gad|c(?![a-z]))).*"

#: default series rules: modality -> regular expressions (case-insensitive) searched in
#: SeriesDescription, then ProtocolName. A series takes the first modality in
#: :data:`CLASSIFY_ORDER` that matches, so ``T2 FLAIR`` is flair and ``T1 POST`` is t1ce.
DEFAULT_SERIES_RULES: dict[str, tuple[str, ...]] = {
    "flair": (r"(?<!t1)(?<!t1[-_ ])flair", r"t2[-_ ]?f(?![a-z])", r"dark[-_ ]?fluid", r"tirm"),
    "t1ce": tuple(
        _NOT_PRE + p
        for p in (
            r"t1.*((?<![a-z])ce(?![a-z])|gd|gad|post|contrast|\+ ?c)",
            r"mp-?rage.*(gd|gad|post|\+ ?c)",
            r"t1c(?![a-z])",
            r"(?<![a-z])(ce|gd|post)[-_ ]*t1",
        )
    ),
    "t2": (r"t2(?![-_ ]?(\*|star))",),
    "t1": (r"t1", r"mp-?rage"),
}

#: the order in which default rules are tried (user rules come first)
CLASSIFY_ORDER = ("flair", "t1ce", "t2", "t1")

CODECS_HINT = "pip install 'edge-infer[dicom-codecs]'"

#: slice positions may differ from a regular grid by this much (mm), or by this share of the spacing
POSITION_ATOL = 0.01
POSITION_RTOL = 1e-3

_SUPPORTED_BITS = (8, 16, 32)
_NON_IMAGE_MODALITIES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "REG", "DOC"}
_LOSSY_SYNTAXES = {  # JPEG baseline/extended, JPEG-LS near-lossless, JPEG 2000, HTJ2K
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203",
}
_READ_ERRORS = (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, NotImplementedError, OverflowError, RuntimeError, zlib.error,
                BytesLengthException, struct.error)

#: a deflated dataset may inflate to at most this many times its compressed size ...
DEFLATE_MAX_RATIO = 100
#: ... or to this many bytes, whichever is larger (a blank slice deflates ~1000:1)
DEFLATE_MIN_LIMIT = 16 << 20
#: encapsulated pixel data may be at most this many times the uncompressed frame, plus slack
ENCAPSULATED_MAX_RATIO = 2
_ENCAPSULATED_SLACK = 64 << 10
#: native pixel data longer than this many times the declared image is refused (a little
#: excess, such as padding, is dropped by the decoder)
NATIVE_MAX_RATIO = 2
_DEFLATED = "1.2.840.10008.1.2.1.99"
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


class CappedReader:
    """A binary file whose ``read(n)`` never asks for more than the bytes left in it.

    ``BufferedReader.read(n)`` allocates ``n`` bytes before reading; a corrupt or hostile
    element length (up to 4 GiB in a file of a few hundred bytes) handed to it by pydicom
    becomes a 4 GiB allocation, a MemoryError on a small board. Wrapping the file keeps
    every read within the file's size.
    """

    def __init__(self, f) -> None:
        self._f = f
        self._size = os.fstat(f.fileno()).st_size
        self.name = getattr(f, "name", None)

    def read(self, n: int = -1) -> bytes:
        left = max(self._size - self._f.tell(), 0)
        return self._f.read(left if n is None or n < 0 else min(n, left))

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self._f.close()

    @property
    def closed(self) -> bool:
        return self._f.closed


class _HeaderProblem(Exception):
    """A header value the reader needs is missing or malformed (raised if the series is used)."""


@dataclass(frozen=True)
class SeriesInfo:
    """What the mapping rules see of a series.

    Attributes
    ----------
    uid : SeriesInstanceUID (raw; never log it, use :attr:`short_hash`)
    description : SeriesDescription, whitespace collapsed
    protocol : ProtocolName, whitespace collapsed
    instances : number of image files
    """

    uid: str
    description: str = ""
    protocol: str = ""
    instances: int = 0

    @property
    def short_hash(self) -> str:
        return uid_hash(self.uid)[:8]

    def label(self) -> str:
        name = self.description or self.protocol or "(no description)"
        return f"'{name}' ({self.instances} images, uid {self.short_hash})"


@dataclass(frozen=True)
class _Instance:
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
    problem: str = ""


@dataclass(frozen=True)
class _Stack:
    """One series' image files in slice order, with its grid."""

    modality: str
    series: SeriesInfo
    instances: tuple[_Instance, ...]
    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def what(self) -> str:
        return f"DICOM series {self.series.label()} for {self.modality}"


def uid_hash(uid: str) -> str:
    """First 16 hex digits of the sha256 of a UID: identifies it in logs without revealing it."""
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:16]


def read_dicom_folder(
    folder: str | Path,
    modalities: Sequence[str],
    rules: dict[str, Sequence[str]] | None = None,
) -> Scan:
    """Read the series of ``modalities`` from a DICOM folder.

    Parameters
    ----------
    folder : walked recursively; hidden files and symlinked folders are skipped, files that
        are not DICOM (no ``DICM`` at byte 128) are ignored
    modalities : channel names, in the order wanted (``t1``, ``t1ce``, ``t2``, ``flair`` or aliases)
    rules : modality -> regular expressions replacing :data:`DEFAULT_SERIES_RULES` for it

    Returns
    -------
    Scan
        ``data`` float32 ``[C, I, J, K]`` after RescaleSlope/Intercept, ``affine`` to RAS+ (see
        :func:`dicom_affine`), ``source`` without patient data, ``reference["dicom"]`` with the
        raw UIDs and files in slice order.

    Raises
    ------
    ScanError
        No DICOM files, a corrupt file, an inconsistent or implausible series.
    ModalityError
        A modality maps to no series or to several.
    GeometryError
        The series are not on one grid, or a series' orientation is inconsistent.
    UnsupportedTransferSyntaxError
        A series is compressed with a syntax no installed decoder handles.
    """
    folder = Path(folder)
    wanted = _canonical_modalities(modalities)
    instances, warnings = _scan_folder(folder)
    by_series = _group_by_series(instances)
    infos = [_series_info(uid, files) for uid, files in by_series.items()]
    mapped = map_series(infos, wanted, rules)
    _check_one_study({m: by_series[s.uid] for m, s in mapped.items()})
    stacks = [_build_stack(m, mapped[m], by_series[mapped[m].uid]) for m in wanted]
    check_same_grid({s.modality: s.shape for s in stacks}, {s.modality: s.affine for s in stacks})
    check_volume_size(stacks[0].shape, len(stacks), f"DICOM series {stacks[0].series.label()}")
    for stack in stacks:
        _check_pixel_format(stack)
        _check_decoders(stack)
    data = np.empty((len(stacks), *stacks[0].shape), dtype=np.float32)
    for c, stack in enumerate(stacks):
        _read_pixels(stack, data[c])
    check_finite(data, wanted)
    warnings += _series_warnings(stacks)
    return Scan(data, stacks[0].affine.copy(), wanted, _source(stacks, warnings), _reference(stacks))


def map_series(
    series: Sequence[SeriesInfo],
    modalities: Sequence[str],
    rules: dict[str, Sequence[str]] | None = None,
) -> dict[str, SeriesInfo]:
    """Pick one series per modality by regular expressions on its description.

    Parameters
    ----------
    series : the series found
    modalities : canonical names or aliases of the modalities wanted
    rules : modality -> regular expressions (case-insensitive) that replace the defaults of
        that modality; user rules are tried before the defaults

    Returns
    -------
    dict
        canonical modality -> its series. A single series and a single modality map directly.

    Raises
    ------
    ModalityError
        One line naming each modality that matches no series or several, listing the series
        found and how to choose (``--series-rule MODALITY=REGEX``).
    """
    wanted = _canonical_modalities(modalities)
    ordered = _compile_rules(rules)
    if len(series) == 1 and len(wanted) == 1:
        return {wanted[0]: series[0]}
    matches = {m: [] for m in wanted}
    for s in series:
        modality = _classify(s, ordered)
        if modality in matches:
            matches[modality].append(s)
    problems = []
    for m, found in matches.items():
        if not found:
            problems.append(f"{m} matches no series")
        elif len(found) > 1:
            problems.append(f"{m} matches {len(found)} series ({', '.join(s.label() for s in found)})")
    if problems:
        listing = ", ".join(s.label() for s in sorted(series, key=lambda s: (s.description, s.uid)))
        raise ModalityError(
            f"cannot map DICOM series to modalities: {'; '.join(problems)}; series found: "
            f"{listing or 'none'}; choose with --series-rule MODALITY=REGEX (a regular "
            "expression searched in SeriesDescription, then ProtocolName)"
        )
    return {m: found[0] for m, found in matches.items()}


def dicom_affine(
    orientation: Sequence[float],
    pixel_spacing: Sequence[float],
    first_position: Sequence[float],
    slice_step: Sequence[float],
) -> np.ndarray:
    """Voxel index ``(i, j, k)`` to RAS+ mm affine of a stack of DICOM slices.

    Parameters
    ----------
    orientation : ImageOrientationPatient (0020,0037): the row direction cosine (the direction
        of increasing column index ``i``) then the column direction cosine (increasing row
        index ``j``), in the patient's LPS frame; normalised here
    pixel_spacing : PixelSpacing (0028,0030): ``[row spacing, column spacing]`` in mm, i.e.
        the distance between adjacent rows, then between adjacent columns
    first_position : ImagePositionPatient (0020,0032) of the first slice: LPS mm of the centre
        of its first transmitted pixel (top left, ``i = j = 0``)
    slice_step : LPS vector from one slice's position to the next one's, best
        ``(last - first) / (n - 1)``; it may be oblique to the slice normal (gantry tilt)

    Returns
    -------
    numpy.ndarray
        ``(4, 4)`` float64 mapping ``(i, j, k, 1)`` to RAS+ mm, where ``i`` is the column index,
        ``j`` the row index and ``k`` the slice index.

    Notes
    -----
    DICOM PS3.3 C.7.6.2.1.1 (Image Position and Image Orientation, Equation C.7.6.2.1-1) gives
    the LPS position of the pixel in column ``i`` and row ``j`` as
    ``P = S + i * Di * X + j * Dj * Y``, with ``X`` the row direction cosine, ``Y`` the column
    direction cosine, ``Di`` the column spacing (``PixelSpacing[1]``), ``Dj`` the row spacing
    (``PixelSpacing[0]``) and ``S`` ImagePositionPatient. The slice axis adds
    ``k * slice_step``. RAS+ is LPS with the first two axes negated, so rows 0 and 1 of the
    LPS affine are multiplied by -1.
    """
    cosines = np.asarray(orientation, dtype=np.float64)
    spacing = np.asarray(pixel_spacing, dtype=np.float64)
    if cosines.shape != (6,) or spacing.shape != (2,) or not np.all(spacing > 0):
        raise GeometryError(
            f"need 6 orientation cosines and 2 positive pixel spacings, got {cosines.tolist()} and "
            f"{spacing.tolist()}; check ImageOrientationPatient and PixelSpacing"
        )
    row_cos, col_cos = _unit(cosines[:3]), _unit(cosines[3:])
    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing[1]
    lps[:3, 1] = col_cos * spacing[0]
    lps[:3, 2] = np.asarray(slice_step, dtype=np.float64)
    lps[:3, 3] = np.asarray(first_position, dtype=np.float64)
    lps[:2, :] *= -1.0
    return lps + 0.0  # no negative zeros


# --- modalities and rules -------------------------------------------------------------------


def _canonical_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
    """Canonical names of the requested modalities; unknown or repeated names are refused."""
    wanted = []
    for name in modalities:
        canonical = canonical_modality(name)
        if canonical is None:
            raise ModalityError(f"unknown modality {name!r}; use t1, t1ce, t2 or flair")
        if canonical in wanted:
            raise ModalityError(f"modality {canonical} is requested twice; list each modality once")
        wanted.append(canonical)
    if not wanted:
        raise ModalityError("no modality requested; name at least one of t1, t1ce, t2, flair")
    return tuple(wanted)


def _compile_rules(rules: dict[str, Sequence[str]] | None) -> list[tuple[str, list[re.Pattern]]]:
    """User rules first (replacing that modality's defaults), then the defaults in order."""
    user: dict[str, list[re.Pattern]] = {}
    for key, patterns in (rules or {}).items():
        modality = canonical_modality(key)
        if modality is None:
            raise ModalityError(f"series rule for unknown modality {key!r}; use t1, t1ce, t2 or flair")
        if isinstance(patterns, str):
            patterns = [patterns]
        user[modality] = [_compile_rule(modality, p) for p in patterns]
    defaults = [(m, [_compile_rule(m, p) for p in DEFAULT_SERIES_RULES[m]]) for m in CLASSIFY_ORDER if m not in user]
    return list(user.items()) + defaults


def _compile_rule(modality: str, pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise ModalityError(
            f"series rule {pattern!r} for {modality} is not a valid regular expression ({exc}); fix it"
        ) from exc


def _classify(series: SeriesInfo, ordered: list[tuple[str, list[re.Pattern]]]) -> str | None:
    """The first modality whose rules match the description, else the protocol name."""
    for text in (series.description, series.protocol):
        if not text:
            continue
        for modality, patterns in ordered:
            if any(p.search(text) for p in patterns):
                return modality
    return None


# --- walking and headers --------------------------------------------------------------------


def _scan_folder(folder: Path) -> tuple[list[_Instance], list[str]]:
    """Header records of the image files under ``folder``, and warnings."""
    if not folder.is_dir():
        raise ScanError(f"{folder} is not a folder; give the folder that holds the DICOM series")
    instances, dicom_files, executables = [], 0, 0
    for path in _candidate_files(folder):
        preamble = _dicom_preamble(path)
        if preamble is None:
            continue
        dicom_files += 1
        executables += preamble[:2] == b"MZ" or preamble[:4] == b"\x7fELF"
        instances.extend(_read_header(path))
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


def _candidate_files(folder: Path) -> Iterator[Path]:
    """Regular files under ``folder`` in sorted order, skipping hidden names and symlinked folders."""

    def fail(err: OSError) -> None:
        raise ScanError(f"cannot list folder {err.filename}: {err.strerror}; check its permissions") from err

    for root, dirs, files in os.walk(folder, onerror=fail, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(root) / name
            if not name.startswith(".") and path.is_file():
                yield path


def _dicom_preamble(path: Path) -> bytes | None:
    """The 128-byte preamble if the file has the DICM prefix, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError as exc:
        raise ScanError(f"cannot read {path.name}: {exc.strerror}; check its permissions") from exc
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    return head[:128]


def _read_header(path: Path) -> list[_Instance]:
    """The header records of an image file, one per frame; none for non-image objects
    (DICOMDIR, SR, SEG ...)."""
    try:
        with open(path, "rb") as f:
            _check_deflate_bomb(f, path)
            ds = pydicom.dcmread(CappedReader(f), stop_before_pixels=True, force=False)
            syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", "")))
            if not syntax:
                raise _HeaderProblem("is truncated or corrupt: its file meta information has no TransferSyntaxUID")
            if len(ds) == 0:
                raise _HeaderProblem("is truncated: it ends inside its header")
            if str(ds.get("Modality", "")).upper() in _NON_IMAGE_MODALITIES:
                return []
            looks_like_image = "Rows" in ds or UID(str(ds.get("SOPClassUID", ""))).keyword.endswith("ImageStorage")
            pixel_bytes = (-1, False)
            if looks_like_image and syntax.is_transfer_syntax and not syntax.is_deflated:
                pixel_bytes = _check_pixel_bytes(f, syntax)
            return _instance_from_header(path, ds, str(syntax), *pixel_bytes) if looks_like_image else []
    except _HeaderProblem as exc:
        raise ScanError(f"DICOM file {path.name} {exc}; copy or export it again") from exc
    except _READ_ERRORS as exc:
        raise ScanError(f"DICOM file {path.name} is corrupt ({_reason(exc)}); copy or export it again") from exc


def _check_pixel_bytes(f, syntax: UID) -> tuple[int, bool]:
    """After a header-only read, the file must hold a pixel data element with all its bytes.

    ``f`` is positioned where pydicom stopped: at the pixel data tag, or at the end of the
    file. Encapsulated (undefined length) pixel data is checked later, by its decoder.
    Returns the pixel data's length (for encapsulated data: the bytes left in the file) and
    whether it is encapsulated.
    """
    start = f.tell()
    size = os.fstat(f.fileno()).st_size
    header = f.read(12)
    f.seek(start)
    order = "little" if syntax.is_little_endian else "big"
    if len(header) < 2 or int.from_bytes(header[:2], order) != 0x7FE0:
        raise _HeaderProblem("is truncated or has no pixel data: it ends before its pixel data")
    explicit = not syntax.is_implicit_VR and header[4:6].isalpha()  # some writers use implicit here
    length = header[8:12] if explicit else header[4:8]
    if len(length) < 4:
        raise _HeaderProblem("is truncated: it ends inside its pixel data element")
    declared = int.from_bytes(length, order)
    present = size - start - (12 if explicit else 8)
    if declared != 0xFFFFFFFF and present < declared:
        raise _HeaderProblem(f"is truncated: it has {present} of the {declared} bytes of its pixel data")
    return (present, True) if declared == 0xFFFFFFFF else (declared, False)


def _check_deflate_bomb(f, path: Path) -> None:
    """Refuse a deflated dataset that inflates beyond its limit, before pydicom inflates it.

    pydicom inflates a Deflated Explicit VR Little Endian dataset in one call, header reads
    included, so a small file can claim gigabytes (a 1000:1 deflate bomb). Here the stream is
    inflated in bounded chunks and dropped; the limit is :func:`deflate_limit`.
    """
    syntax, start = file_meta_syntax(f)
    f.seek(0)
    if syntax != _DEFLATED:
        return
    size = os.fstat(f.fileno()).st_size
    limit = deflate_limit(size - start)
    f.seek(start)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total, chunk = 0, 1 << 20
    try:
        while not inflater.eof:
            data = f.read(1 << 16)
            if not data:
                break
            while data:
                total += len(inflater.decompress(data, chunk))
                data = inflater.unconsumed_tail
                if total > limit:
                    raise ScanError(
                        f"DICOM file {path.name} is a deflate bomb: {size - start} compressed bytes inflate to more "
                        f"than {limit} bytes ({DEFLATE_MAX_RATIO}:1 is the most allowed); remove it"
                    )
    except zlib.error as exc:
        raise ScanError(f"DICOM file {path.name} has corrupt deflated data ({exc}); copy or export it again") from None
    finally:
        f.seek(0)


def deflate_limit(compressed: int) -> int:
    """The most bytes a deflated dataset of ``compressed`` bytes may inflate to.

    ``DEFLATE_MAX_RATIO`` times the compressed size, at least ``DEFLATE_MIN_LIMIT``, and never
    more than the memory a volume may use (:data:`~edge_infer.scan.MEMORY_SHARE` of what is free).
    """
    from . import scan as _scan

    budget = int(_scan.available_memory_bytes() * _scan.MEMORY_SHARE)
    return min(max(DEFLATE_MIN_LIMIT, DEFLATE_MAX_RATIO * max(compressed, 0)), budget)


def file_meta_syntax(f) -> tuple[str, int]:
    """TransferSyntaxUID of a Part 10 file and the offset where its dataset starts.

    Walks the group 0002 elements (always Explicit VR Little Endian, PS3.10 7.1) after the
    preamble and ``DICM``; returns ``("", 132)`` when they cannot be read, leaving the file to
    pydicom. The file position is left anywhere.
    """
    f.seek(132)
    pos, syntax = 132, ""
    while pos < 132 + (1 << 16):
        head = f.read(8)
        if len(head) < 8 or int.from_bytes(head[:2], "little") != 0x0002:
            break
        vr = head[4:6]
        if vr in _LONG_VRS:
            more = f.read(4)
            if len(more) < 4:
                break
            length, header = int.from_bytes(more, "little"), 12
        else:
            length, header = int.from_bytes(head[6:8], "little"), 8
        if length > 1 << 16:
            break
        value = f.read(length)
        if len(value) < length:
            break
        if int.from_bytes(head[2:4], "little") == 0x0010:
            syntax = value.decode("ascii", "replace").strip("\0 ")
        pos += header + length
    return syntax, pos


def _instance_from_header(path: Path, ds: pydicom.Dataset, syntax: str, pixel_bytes: int = -1,
                          encapsulated: bool = False) -> list[_Instance]:
    """Identity fields now; geometry fields parsed (per frame for a multi-frame image), or a
    problem kept for when the series is used."""
    identity = dict(
        path=path,
        study_uid=_text(ds, "StudyInstanceUID"),
        series_uid=_text(ds, "SeriesInstanceUID"),
        sop_uid=_text(ds, "SOPInstanceUID"),
        sop_class_uid=_text(ds, "SOPClassUID"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        description=_text(ds, "SeriesDescription"),
        protocol=_text(ds, "ProtocolName"),
        transfer_syntax=syntax,
        pixel_bytes=pixel_bytes,
        encapsulated=encapsulated,
    )
    if not identity["series_uid"]:
        raise ScanError(
            f"DICOM image {path.name} has no SeriesInstanceUID, so it belongs to no series; remove it"
        )
    try:
        frames = _int(ds, "NumberOfFrames", 1)
        per_frame = _frame_fields(ds, frames) if frames > 1 or "PerFrameFunctionalGroupsSequence" in ds \
            else [_plane_fields(ds, ds, ds, ds)]
        base = _image_fields(ds)
        return [_Instance(**identity, **base, frames=frames, frame=i, **f) for i, f in enumerate(per_frame)]
    except _HeaderProblem as exc:
        return [_Instance(**identity, problem=str(exc))]
    except (ValueError, TypeError, OverflowError) as exc:
        return [_Instance(**identity, problem=f"has a malformed value ({_reason(exc)})")]


def _image_fields(ds: pydicom.Dataset) -> dict[str, Any]:
    """What every frame of an image file shares: its size and pixel format."""
    return dict(rows=_int(ds, "Rows"), columns=_int(ds, "Columns"), bits_allocated=_int(ds, "BitsAllocated"),
                samples_per_pixel=_int(ds, "SamplesPerPixel", 1))


def _plane_fields(position: pydicom.Dataset, orientation: pydicom.Dataset, measures: pydicom.Dataset,
                  transform: pydicom.Dataset) -> dict[str, Any]:
    """A plane's position, orientation, pixel spacing and rescale, each from the dataset that
    holds it (the image itself, or a frame's functional group macros)."""
    fields = dict(
        position=_floats(position, "ImagePositionPatient", 3),
        orientation=_floats(orientation, "ImageOrientationPatient", 6),
        pixel_spacing=_floats(measures, "PixelSpacing", 2),
        slope=_floats(transform, "RescaleSlope", 1, 1.0)[0],
        intercept=_floats(transform, "RescaleIntercept", 1, 0.0)[0],
    )
    if fields["slope"] == 0:
        raise _HeaderProblem("has RescaleSlope 0")
    if min(fields["pixel_spacing"]) <= 0:
        raise _HeaderProblem(f"has a non-positive PixelSpacing {list(fields['pixel_spacing'])}")
    return fields


def _frame_fields(ds: pydicom.Dataset, frames: int) -> list[dict[str, Any]]:
    """The plane of each frame of a multi-frame image (Enhanced MR, Legacy Converted Enhanced
    MR): each functional group macro from the frame's own item, else from the shared one."""
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    if len(per) != frames:
        raise _HeaderProblem(
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
        except _HeaderProblem as exc:
            raise _HeaderProblem(f"frame {i + 1} {exc}") from None
    return out


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    return " ".join(str(ds.get(keyword, "") or "").split())


def _int(ds: pydicom.Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword, None)
    if value is None or value == "":
        if default is None:
            raise _HeaderProblem(f"has no {keyword}")
        return default
    return int(value)


def _floats(ds: pydicom.Dataset, keyword: str, count: int, default: float | None = None) -> tuple[float, ...]:
    value = ds.get(keyword, None)
    if value is None or value == "":
        if default is None:
            raise _HeaderProblem(f"has no {keyword}")
        return (default,) * count
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    if len(values) != count:
        raise _HeaderProblem(f"has {len(values)} values in {keyword}, expected {count}")
    floats = tuple(float(v) for v in values)
    if not all(np.isfinite(floats)):
        raise _HeaderProblem(f"has a non-finite {keyword} {list(floats)}")
    return floats


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


# --- series ---------------------------------------------------------------------------------


def _group_by_series(instances: list[_Instance]) -> dict[str, list[_Instance]]:
    groups: dict[str, list[_Instance]] = {}
    for inst in instances:
        groups.setdefault(inst.series_uid, []).append(inst)
    return groups


def _series_info(uid: str, instances: list[_Instance]) -> SeriesInfo:
    description = next((i.description for i in instances if i.description), "")
    protocol = next((i.protocol for i in instances if i.protocol), "")
    return SeriesInfo(uid, description, protocol, len(instances))


def _check_one_study(selected: dict[str, list[_Instance]]) -> None:
    """The mapped series must come from one study (the SEG references a single study)."""
    studies = {m: files[0].study_uid for m, files in selected.items()}
    if len(set(studies.values())) > 1:
        parts = ", ".join(f"{m} from study {uid_hash(s)[:8]}" for m, s in studies.items())
        raise ModalityError(
            f"the selected series come from different studies ({parts}); put one study per folder "
            "or choose series of one study with --series-rule MODALITY=REGEX"
        )


def _build_stack(modality: str, series: SeriesInfo, instances: list[_Instance]) -> _Stack:
    """Order a series' slices along the normal, check them, and compute the grid."""
    what = f"DICOM series {series.label()} for {modality}"
    _check_headers(instances, what)
    first = instances[0]
    check_is_volume((first.columns, first.rows, len(instances)), what)
    _check_uniform(instances, what)
    ordered, positions = _order_along_normal(instances, what)
    step = (positions[-1] - positions[0]) / (len(ordered) - 1)
    _check_collinear(positions, step, what)
    affine = dicom_affine(first.orientation, first.pixel_spacing, positions[0], step)
    return _Stack(modality, series, tuple(ordered), (first.columns, first.rows, len(ordered)), affine)


def _check_headers(instances: list[_Instance], what: str) -> None:
    """Raise the header problem kept for a file."""
    for inst in instances:
        if inst.problem:
            raise ScanError(f"{what}: file {inst.path.name} {inst.problem}; fix or remove that file")


def _order_along_normal(instances: list[_Instance], what: str) -> tuple[list[_Instance], np.ndarray]:
    """Instances sorted by position along row cosine x column cosine, and their LPS positions."""
    cosines = instances[0].orientation
    row_cos, col_cos = _unit(np.array(cosines[:3])), _unit(np.array(cosines[3:]))
    if abs(float(row_cos @ col_cos)) > 1e-3:
        raise GeometryError(f"{what} has non-orthogonal ImageOrientationPatient {list(cosines)}; fix the header")
    positions = np.array([inst.position for inst in instances], dtype=np.float64)
    distances = positions @ np.cross(row_cos, col_cos)
    order = np.argsort(distances, kind="stable")
    ordered = [instances[i] for i in order]
    _check_spacing(distances[order], ordered, what)
    return ordered, positions[order]


def _check_uniform(instances: list[_Instance], what: str) -> None:
    """All slices share Rows/Columns, PixelSpacing and ImageOrientationPatient."""
    first = instances[0]
    for inst in instances[1:]:
        if (inst.rows, inst.columns) != (first.rows, first.columns):
            raise ScanError(
                f"{what} mixes image sizes: {inst.path.name} is {inst.rows}x{inst.columns}, "
                f"{first.path.name} is {first.rows}x{first.columns}; remove the odd files"
            )
        if not np.allclose(inst.pixel_spacing, first.pixel_spacing, rtol=POSITION_RTOL, atol=1e-4):
            raise ScanError(
                f"{what} mixes pixel spacings: {inst.path.name} has {list(inst.pixel_spacing)}, "
                f"{first.path.name} has {list(first.pixel_spacing)}; remove the odd files"
            )
        if not np.allclose(inst.orientation, first.orientation, atol=1e-4):
            raise GeometryError(
                f"{what} mixes slice orientations: {inst.path.name} has {list(inst.orientation)}, "
                f"{first.path.name} has {list(first.orientation)}; it may hold several stacks, "
                "export them as separate series"
            )


def _check_spacing(distances: np.ndarray, ordered: list[_Instance], what: str) -> None:
    """Refuse duplicate positions and uneven spacing; name a missing slice's position."""
    diffs = np.diff(distances)
    for k, d in enumerate(diffs):
        if d <= POSITION_ATOL:
            a, b = ordered[k], ordered[k + 1]
            same = "the same instance (same SOPInstanceUID)" if a.sop_uid == b.sop_uid else "at the same position"
            raise ScanError(
                f"{what}: files {a.path.name} and {b.path.name} are {same} ({distances[k]:.2f} mm "
                "along the normal); remove duplicates, or split echoes/repetitions into separate series"
            )
    median = float(np.median(diffs))
    tol = max(POSITION_ATOL, POSITION_RTOL * median)
    bad = np.flatnonzero(np.abs(diffs - median) > tol)
    if bad.size == 0:
        return
    base = float(diffs.min())
    multiples = np.rint(diffs / base)
    if np.all(np.abs(diffs - multiples * base) <= max(POSITION_ATOL, POSITION_RTOL * base)):
        k = int(np.flatnonzero(multiples > 1)[0])
        missing = int(multiples[k]) - 1
        first, last = distances[k] + base, distances[k] + missing * base
        where = f"the slice at {first:.2f} mm is" if missing == 1 else f"the slices at {first:.2f} to {last:.2f} mm are"
        raise ScanError(
            f"{what} is missing {missing} slice(s) after slice {k} (at {distances[k]:.2f} mm along the "
            f"slice normal): the next slice is {diffs[k]:.2f} mm away but the spacing is {base:.2f} mm, so "
            f"{where} missing; copy or export the complete series"
        )
    k = int(bad[0])
    raise ScanError(
        f"{what} has uneven slice spacing: slices {k} and {k + 1} are {diffs[k]:.3f} mm apart but the "
        f"median spacing is {median:.3f} mm; the series may mix stacks, choose another series"
    )


def _check_collinear(positions: np.ndarray, step: np.ndarray, what: str) -> None:
    """Slice positions must lie on one line ``first + k * step`` (a single stack)."""
    expected = positions[0] + np.arange(len(positions))[:, None] * step
    deviation = np.linalg.norm(positions - expected, axis=1)
    tol = max(POSITION_ATOL, POSITION_RTOL * float(np.linalg.norm(step)))
    if deviation.max() > tol:
        k = int(deviation.argmax())
        raise GeometryError(
            f"{what}: slice {k} is {deviation[k]:.3f} mm off the line through the other slice "
            "positions; the series may mix stacks, export them as separate series"
        )


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm < 1e-6:
        raise GeometryError(f"direction cosine {v.tolist()} has no length; fix ImageOrientationPatient")
    return v / norm


# --- pixels ---------------------------------------------------------------------------------


def _check_pixel_format(stack: _Stack) -> None:
    """Plausible BitsAllocated and one sample per pixel, checked before reading any pixel."""
    for inst in stack.instances:
        if inst.samples_per_pixel != 1:
            raise ScanError(
                f"{stack.what}: {inst.path.name} has {inst.samples_per_pixel} samples per pixel (colour); "
                "edge-infer reads greyscale MR images only"
            )
        if inst.bits_allocated not in _SUPPORTED_BITS:
            raise ScanError(
                f"{stack.what}: {inst.path.name} declares BitsAllocated {inst.bits_allocated}, expected one of "
                f"{', '.join(map(str, _SUPPORTED_BITS))}; the header is wrong or the file is not an MR image"
            )
        problem = pixel_length_problem(inst.pixel_bytes, inst.encapsulated, inst.rows, inst.columns,
                                       inst.bits_allocated, inst.frames)
        if problem:
            raise ScanError(f"{stack.what}: {inst.path.name} {problem}; the file is corrupt or hostile, remove it")


def pixel_length_problem(length: int, encapsulated: bool, rows: int, columns: int, bits: int,
                         frames: int = 1) -> str:
    """Why ``length`` bytes of pixel data cannot belong to ``frames`` frames of ``rows x columns``, or ``""``.

    Native data longer than :data:`NATIVE_MAX_RATIO` times the frame, and encapsulated data
    longer than :data:`ENCAPSULATED_MAX_RATIO` times it (plus slack for item tags and offset
    tables), are refused before decoding: a lossless codec never needs that much, and a
    decoder such as RLE (up to 64:1 per run) would otherwise inflate the excess. Shorter
    native data is left to the decoder, which refuses it. ``length`` -1 means unknown.
    """
    if length < 0:
        return ""
    frame = (rows * columns * bits * max(frames, 1) + 7) // 8
    image = f"{rows}x{columns}" + (f"x{frames}-frame" if frames > 1 else "")
    if encapsulated and length > ENCAPSULATED_MAX_RATIO * frame + _ENCAPSULATED_SLACK * max(frames, 1):
        return (f"holds {length} bytes of compressed pixel data for a {image} image of {frame} bytes "
                "uncompressed")
    if not encapsulated and length > NATIVE_MAX_RATIO * frame + 2:
        return f"holds {length} bytes of pixel data but its {image} {bits}-bit image needs {frame}"
    return ""


def _check_decoders(stack: _Stack) -> None:
    """Every transfer syntax of the series must have a usable pixel decoder."""
    for syntax in sorted({inst.transfer_syntax for inst in stack.instances}):
        problem = _decoder_problem(syntax)
        if problem:
            uid = UID(syntax)
            raise UnsupportedTransferSyntaxError(
                f"{stack.what} uses transfer syntax {uid.name} ({uid}), {problem}"
            )


def _decoder_problem(syntax: str) -> str:
    """Why pixels in ``syntax`` cannot be decoded here, with the fix; empty if they can."""
    uid = UID(syntax)
    if not uid.is_transfer_syntax:
        return "which is not a known transfer syntax; re-export the series uncompressed"
    if not uid.is_compressed:
        return ""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        return "which no pydicom decoder handles; re-export the series uncompressed (e.g. gdcmconv --raw)"
    if decoder.is_available:
        return ""
    return f"and no decoder for it is installed; install one with {CODECS_HINT}"


def _read_pixels(stack: _Stack, out: np.ndarray) -> None:
    """Fill ``out [I, J, K]`` slice by slice with rescaled pixel values (a multi-frame file is
    decoded once for all its frames)."""
    decoded: dict[Path, np.ndarray] = {}                  # the last file decoded
    for k, inst in enumerate(stack.instances):
        if inst.path not in decoded:
            decoded.clear()
            try:
                with open(inst.path, "rb") as f:
                    decoded[inst.path] = pydicom.dcmread(CappedReader(f), force=False).pixel_array
            except _READ_ERRORS as exc:
                raise ScanError(
                    f"{stack.what}: cannot decode the pixels of {inst.path.name} ({_reason(exc)}); "
                    "the file may be corrupt or truncated, copy or export it again"
                ) from exc
        pixels = decoded[inst.path]
        if inst.frames > 1 and pixels.shape == (inst.frames, inst.rows, inst.columns):
            pixels = pixels[inst.frame]
        if pixels.shape != (inst.rows, inst.columns):
            raise ScanError(
                f"{stack.what}: {inst.path.name} decodes to shape {pixels.shape} but its header says "
                f"{inst.rows}x{inst.columns}; the file is corrupt, export it again"
            )
        if inst.slope == 1.0 and inst.intercept == 0.0:
            out[:, :, k] = pixels.T
        else:
            out[:, :, k] = pixels.T * inst.slope + inst.intercept


# --- provenance -----------------------------------------------------------------------------


def _series_warnings(stacks: list[_Stack]) -> list[str]:
    warnings = []
    for stack in stacks:
        lossy = sorted({i.transfer_syntax for i in stack.instances} & _LOSSY_SYNTAXES)
        if lossy:
            names = ", ".join(UID(s).name for s in lossy)
            warnings.append(
                f"{stack.modality} series is lossy-compressed ({names}); intensities differ from the scanner's"
            )
    if len({s.instances[0].frame_of_reference_uid for s in stacks}) > 1:
        warnings.append("the series have different FrameOfReferenceUIDs; their positions may not be comparable")
    return warnings


def _source(stacks: list[_Stack], warnings: list[str]) -> dict[str, Any]:
    """Identity of the input without patient data: descriptions, counts and UID hashes."""
    series = [
        {
            "modality": s.modality,
            "series_uid_sha256": uid_hash(s.series.uid),
            "series_description": s.series.description,
            "instances": len(s.instances),
            "transfer_syntax": ",".join(sorted({i.transfer_syntax for i in s.instances})),
        }
        for s in stacks
    ]
    return {
        "format": "dicom",
        "series": series,
        "study_uid_sha256": uid_hash(stacks[0].instances[0].study_uid),
        "warnings": warnings,
    }


def _reference(stacks: list[_Stack]) -> dict[str, Any]:
    """Raw UIDs and files in slice order, for the DICOM SEG writer (never logged)."""
    series = {
        s.modality: {
            "series_instance_uid": s.series.uid,
            "files": [str(i.path) for i in s.instances],
            "sop_instance_uids": [i.sop_uid for i in s.instances],
            "frame_numbers": [i.frame + 1 for i in s.instances],   # in its file (1 for single-frame images)
            "sop_class_uid": s.instances[0].sop_class_uid,
            "frame_of_reference_uid": s.instances[0].frame_of_reference_uid,
        }
        for s in stacks
    }
    return {"dicom": {"study_instance_uid": stacks[0].instances[0].study_uid, "series": series}}
