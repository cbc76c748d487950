"""Parse DICOM files ahead of the read: what :func:`~edge_infer.dicom.headers.parse_file` and
:func:`~edge_infer.dicom.pixels.decode_pixels` return for each file, kept until the read.

The DICOM node parses the instances of a study while it waits for the study to be complete
(:mod:`edge_infer.node.prefetch`), so the read that starts the job only assembles them. A
cached result is used only while the file is the one that was parsed: same path, inode, size
and modification time (a resend replaces a file atomically, so it gets a new inode); anything
else, and anything that failed to parse, is read again by the reader itself, with its own
checks and messages. Decoded pixels are kept up to a byte cap; beyond it, headers only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import EdgeInferError
from .guards import READ_ERRORS
from .headers import Instance, Parsed, parse_file
from .pixels import decodable, decode_pixels

#: decoded pixel bytes a cache keeps at most (a 4-series study of 160 slices of 256x256 int16: 21 MB)
PIXEL_CACHE_BYTES = 256 * 1024 * 1024

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
    parsed: Parsed | None            # None: it failed to parse (the reader reads it again, and says why)
    pixels: np.ndarray | None = None


class ParseCache:
    """Parsed headers and decoded pixels of files, by path, valid while the file is unchanged.

    Pass it to :func:`~edge_infer.dicom.read_dicom_folder`; fill it with :meth:`prefetch`.
    Not thread-safe: one thread prefetches and reads.
    """

    def __init__(self, max_pixel_bytes: int = PIXEL_CACHE_BYTES) -> None:
        self.max_pixel_bytes = max_pixel_bytes
        self.pixel_bytes = 0
        self._files: dict[Path, _Entry] = {}

    def __len__(self) -> int:
        return len(self._files)

    def _valid(self, path: Path) -> _Entry | None:
        entry = self._files.get(path)
        return entry if entry is not None and entry.stamp == _stamp(path) else None

    def parse_file(self, path: Path) -> Parsed:
        """:func:`~edge_infer.dicom.headers.parse_file`, from the cache while the file is unchanged."""
        entry = self._valid(path)
        return entry.parsed if entry is not None and entry.parsed is not None else parse_file(path)

    def decode_pixels(self, inst: Instance) -> np.ndarray:
        """:func:`~edge_infer.dicom.pixels.decode_pixels`, from the cache while the file is unchanged."""
        entry = self._valid(inst.path)
        if entry is not None and entry.pixels is not None:
            return entry.pixels
        return decode_pixels(inst)

    def prefetch(self, path: Path) -> bool:
        """Parse ``path`` (and decode its pixels, within the cap) unless cached and unchanged;
        returns whether it did any work. A file that fails to parse or decode is left out:
        the reader reads it again and says what is wrong with it."""
        stamp = _stamp(path)
        old = self._files.get(path)
        if stamp is None or (old is not None and old.stamp == stamp):
            return False
        self.forget([path])
        entry = self._files[path] = _Entry(stamp, None)
        try:
            entry.parsed = parse_file(path)
        except _FAILURES:
            return True
        records = entry.parsed[1]
        if records and decodable(records[0]) and self._room_for(records[0]):
            try:
                pixels = decode_pixels(records[0])
            except _FAILURES:
                return True
            if self.pixel_bytes + pixels.nbytes <= self.max_pixel_bytes:
                entry.pixels = pixels
                self.pixel_bytes += pixels.nbytes
        return True

    def _room_for(self, inst: Instance) -> bool:
        """Whether the pixels the header declares fit under the cap (checked again once decoded)."""
        size = inst.rows * inst.columns * inst.frames * max(inst.bits_allocated // 8, 1)
        return self.pixel_bytes + size <= self.max_pixel_bytes

    def forget(self, paths) -> None:
        """Drop the entries of ``paths``."""
        for path in paths:
            entry = self._files.pop(path, None)
            if entry is not None and entry.pixels is not None:
                self.pixel_bytes -= entry.pixels.nbytes

    def forget_under(self, folder: Path) -> None:
        """Drop the entries of the files under ``folder``."""
        self.forget([p for p in self._files if folder in p.parents])
