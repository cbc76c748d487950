"""Guards against hostile or corrupt DICOM files, applied before pydicom or a decoder sees them.

Each guard bounds what a file may make the reader allocate: reads capped at the file's size,
deflated datasets inflated in bounded chunks, pixel data lengths checked against the image
they claim to hold.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path
from typing import Literal

from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID

from .. import scan as scan_module
from ..errors import ScanError

READ_ERRORS = (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, IndexError,
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


class HeaderProblem(Exception):
    """A header value the reader needs is missing or malformed (raised if the series is used)."""


def check_pixel_bytes(f, syntax: UID) -> tuple[int, bool]:
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
    order: Literal["little", "big"] = "little" if syntax.is_little_endian else "big"
    if len(header) < 2 or int.from_bytes(header[:2], order) != 0x7FE0:
        raise HeaderProblem("is truncated or has no pixel data: it ends before its pixel data")
    explicit = not syntax.is_implicit_VR and header[4:6].isalpha()  # some writers use implicit here
    length = header[8:12] if explicit else header[4:8]
    if len(length) < 4:
        raise HeaderProblem("is truncated: it ends inside its pixel data element")
    declared = int.from_bytes(length, order)
    present = size - start - (12 if explicit else 8)
    if declared != 0xFFFFFFFF and present < declared:
        raise HeaderProblem(f"is truncated: it has {present} of the {declared} bytes of its pixel data")
    return (present, True) if declared == 0xFFFFFFFF else (declared, False)


def check_deflate_bomb(f, path: Path, meta_start: int = 132) -> None:
    """Refuse a deflated dataset that inflates beyond its limit, before pydicom inflates it.

    pydicom inflates a Deflated Explicit VR Little Endian dataset in one call, header reads
    included, so a small file can claim gigabytes (a 1000:1 deflate bomb). Here the stream is
    inflated in bounded chunks and dropped; the limit is :func:`deflate_limit`. ``meta_start``
    is where the file meta elements start: 132 after the preamble, 0 in a file without one.
    """
    syntax, start = file_meta_syntax(f, meta_start)
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
            while data and not inflater.eof:  # past the end, zlib keeps the rest as unconsumed_tail forever
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
    budget = int(scan_module.available_memory_bytes() * scan_module.MEMORY_SHARE)
    return min(max(DEFLATE_MIN_LIMIT, DEFLATE_MAX_RATIO * max(compressed, 0)), budget)


def file_meta_syntax(f, start: int = 132) -> tuple[str, int]:
    """TransferSyntaxUID of a Part 10 file and the offset where its dataset starts.

    Walks the group 0002 elements (always Explicit VR Little Endian, PS3.10 7.1) after the
    preamble and ``DICM`` (from ``start``: 0 in a file without a preamble); returns
    ``("", start)`` when they cannot be read, leaving the file to pydicom. The file position is
    left anywhere.
    """
    f.seek(start)
    pos, syntax = start, ""
    while pos < start + (1 << 16):
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


#: a bytes literal in a library's message (``b'...'``, possibly cut short): raw file content
_BYTES_LITERAL = re.compile(r"""b'(?:[^'\\]|\\.)*(?:'|$)|b"(?:[^"\\]|\\.)*(?:"|$)""")
#: a UID other than DICOM's own registry (``1.2.840.10008.*``): may identify a patient's study
_RAW_UID = re.compile(r"(?<![\d.])(?!1\.2\.840\.10008\.)\d+(?:\.\d+){3,}")
#: a quoted person name (``'DOE^JANE'``)
_PERSON_NAME = re.compile(r"'[^']*\^[^']*'")


def reason(exc: BaseException) -> str:
    """A library exception as one short line for a message, without what it quoted from the
    file: bytes literals, UIDs and person names are replaced (no patient data in errors)."""
    text = " ".join(str(exc).split())
    text = _BYTES_LITERAL.sub("<bytes>", text)
    text = _PERSON_NAME.sub("<name>", _RAW_UID.sub("<uid>", text))
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
