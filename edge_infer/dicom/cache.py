"""Parse DICOM files ahead of the read: what :func:`~edge_infer.dicom.headers.parse_file` and
:func:`~edge_infer.dicom.pixels.decode_pixels` return for each file (and the header the SEG
writer reads as a source image), kept until the read.

The DICOM node parses the instances of a study while it waits for the study to be complete
(:mod:`edge_infer.node.prefetch`), so the read that starts the job only assembles them. A
cached result is used only while the file is the one that was parsed: same path, device,
inode, size and modification time (a resend replaces a file atomically, so it gets a new
inode); anything else, anything that failed to parse and anything a library warned about, is
read again by the reader itself, with its own checks, messages and warnings. Decoded pixels
and SEG source headers are kept up to a byte cap; beyond it, headers only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from ..errors import EdgeInferError
from ..library_messages import capture_library_messages
from .guards import READ_ERRORS
from .headers import Instance, Parsed, parse_file
from .pixels import decodable, decode_pixels, decode_with_header

#: bytes of decoded pixels and SEG source headers a cache keeps at most (a 4-series study of
#: 160 slices of 256x256 int16 takes 21 MB of pixels and about 5 MB of headers)
CACHE_BYTES = 256 * 1024 * 1024
#: what a parsed header costs in memory at least, and per encoded byte (pydicom's objects)
_HEADER_MIN_BYTES, _HEADER_FACTOR = 32 * 1024, 16

_Stamp = tuple[int, int, int, int]
#: what parsing or decoding a bad file raises; the reader raises it again, with its message
_FAILURES = (EdgeInferError, *READ_ERRORS)


def _stamp(path: Path) -> _Stamp | None:
    """What identifies a file's content cheaply: (device, inode, size, mtime in ns); None if gone."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


@dataclass
class _Entry:
    stamp: _Stamp
    parsed: Parsed | None = None     # None: read it cold (it failed, or a library warned)
    pixels: np.ndarray | None = None
    header: pydicom.Dataset | None = None
    cost: int = 0                    # bytes counted against the cap


class ParseCache:
    """Parsed headers, decoded pixels and SEG source headers of files, by path, valid while
    the file is unchanged.

    Pass it to :func:`~edge_infer.dicom.read_dicom_folder`; fill it with :meth:`prefetch`.
    Not thread-safe: one thread prefetches and reads.
    """

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self.cached_bytes = 0
        self._files: dict[Path, _Entry] = {}

    def __len__(self) -> int:
        return len(self._files)

    def _valid(self, path: Path) -> _Entry | None:
        entry = self._files.get(path)
        return entry if entry is not None and entry.parsed is not None and entry.stamp == _stamp(path) else None

    def parse_file(self, path: Path) -> Parsed:
        """:func:`~edge_infer.dicom.headers.parse_file`, from the cache while the file is unchanged."""
        entry = self._valid(path)
        if entry is not None and entry.parsed is not None:
            return entry.parsed
        return parse_file(path)

    def decode_pixels(self, inst: Instance) -> np.ndarray:
        """:func:`~edge_infer.dicom.pixels.decode_pixels`, from the cache while the file is unchanged."""
        entry = self._valid(inst.path)
        if entry is not None and entry.pixels is not None:
            return entry.pixels
        return decode_pixels(inst)

    def source_header(self, path: str | Path) -> pydicom.Dataset | None:
        """The file's header as the SEG writer reads it (``stop_before_pixels``), while the file
        is unchanged; None if not cached (the writer reads it)."""
        entry = self._valid(Path(path))
        return entry.header if entry is not None else None

    def prefetch(self, path: Path) -> bool:
        """Parse ``path`` (decode its pixels and read its SEG source header, within the cap)
        unless cached and unchanged; returns whether it did any work. A file that fails to
        parse, or that a library warns about, is left for the reader to read and report."""
        stamp = _stamp(path)
        old = self._files.get(path)
        if stamp is None or (old is not None and old.stamp == stamp):
            return False
        self.forget([path])
        entry = self._files[path] = _Entry(stamp)
        with capture_library_messages("prefetch") as messages:
            try:
                parsed = parse_file(path)
                pixels, header, cost = self._image(path, parsed[1], stamp[2])
            except _FAILURES:
                return True
        if not messages:
            entry.parsed = parsed
            if cost and self.cached_bytes + cost <= self.max_bytes:
                entry.pixels, entry.header, entry.cost = pixels, header, cost
                self.cached_bytes += cost
        return True

    def _image(self, path: Path, records: list[Instance], size: int):
        """(pixels, SEG source header, bytes they cost) of an image the reader would decode, if
        they fit under the cap; (None, None, 0) otherwise."""
        if not records or not decodable(records[0]):
            return None, None, 0
        inst = records[0]
        header_cost = max(_HEADER_MIN_BYTES, _HEADER_FACTOR * (size - max(inst.pixel_bytes, 0)))
        declared = inst.rows * inst.columns * inst.frames * max(inst.bits_allocated // 8, 1)
        if self.cached_bytes + declared + header_cost > self.max_bytes:
            return None, None, 0
        pixels, header = decode_with_header(inst)  # one read for both
        return pixels, (header if inst.part10 else None), pixels.nbytes + header_cost  # a bare dataset: as the writer

    def forget(self, paths: Iterable[Path]) -> None:
        """Drop the entries of ``paths``."""
        for path in paths:
            entry = self._files.pop(path, None)
            if entry is not None:
                self.cached_bytes -= entry.cost

    def forget_under(self, folder: Path) -> None:
        """Drop the entries of the files under ``folder``."""
        self.forget([p for p in self._files if folder in p.parents])
