"""Pixel reading: format and decoder checks, then the rescaled pixels of a stack (multi-frame
files decoded once for all their frames)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import UID

from ..errors import ScanError, UnsupportedTransferSyntaxError
from .geometry import Stack
from .guards import READ_ERRORS, CappedReader, pixel_length_problem, reason
from .headers import Instance

CODECS_HINT = "pip install 'edge-infer[dicom-codecs]'"
_SUPPORTED_BITS = (8, 16, 32)


def check_pixel_format(stack: Stack) -> None:
    """Plausible BitsAllocated and one sample per pixel, checked before reading any pixel."""
    for inst in stack.instances:
        problem = _format_problem(inst)
        if problem:
            raise ScanError(f"{stack.what}: {inst.path.name} {problem}")


def _format_problem(inst: Instance) -> str:
    """What is wrong with an image's pixel format, with the fix; empty if nothing."""
    if inst.samples_per_pixel != 1:
        return (f"has {inst.samples_per_pixel} samples per pixel (colour); "
                "edge-infer reads greyscale MR images only")
    if inst.bits_allocated not in _SUPPORTED_BITS:
        return (f"declares BitsAllocated {inst.bits_allocated}, expected one of "
                f"{', '.join(map(str, _SUPPORTED_BITS))}; the header is wrong or the file is not an MR image")
    problem = pixel_length_problem(inst.pixel_bytes, inst.encapsulated, inst.rows, inst.columns,
                                   inst.bits_allocated, inst.frames)
    return f"{problem}; the file is corrupt or hostile, remove it" if problem else ""


def decodable(inst: Instance) -> bool:
    """Whether the reader would decode this image's pixels: a usable header, a plausible pixel
    format and an installed decoder (what :func:`check_pixel_format` and :func:`check_decoders`
    ask of a series)."""
    return not inst.problem and not _format_problem(inst) and not _decoder_problem(inst.transfer_syntax)


def check_decoders(stack: Stack) -> None:
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


def read_pixels(stack: Stack, out: np.ndarray, decode: Callable[[Instance], np.ndarray] | None = None) -> None:
    """Fill ``out [I, J, K]`` slice by slice with rescaled pixel values (a multi-frame file is
    decoded once for all its frames) by ``decode`` (:func:`decode_pixels`, or a cache of its results)."""
    decode = decode or decode_pixels
    decoded: dict[Path, np.ndarray] = {}                  # the last file decoded
    for k, inst in enumerate(stack.instances):
        if inst.path not in decoded:
            decoded.clear()
            try:
                decoded[inst.path] = decode(inst)
            except READ_ERRORS as exc:
                raise ScanError(
                    f"{stack.what}: cannot decode the pixels of {inst.path.name} ({reason(exc)}); "
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


#: the first pixel element's tag (FloatPixelData): pydicom's ``stop_before_pixels`` stops there
_FIRST_PIXEL_TAG = 0x7FE00008


def decode_pixels(inst: Instance) -> np.ndarray:
    """The pixel array of an image file; a dataset without file meta gets the transfer syntax
    the header pass found (pydicom needs it to decode)."""
    with open(inst.path, "rb") as f:
        return _read_whole(f, inst).pixel_array


def decode_with_header(inst: Instance) -> tuple[np.ndarray, pydicom.Dataset]:
    """:func:`decode_pixels`, and from the same read the file's header as
    ``pydicom.dcmread(path, stop_before_pixels=True)`` gives it (what the SEG writer reads of
    a source image): every element before the pixel data, the file meta and the preamble."""
    with open(inst.path, "rb") as f:
        ds = _read_whole(f, inst)
        pixels = ds.pixel_array
    header = pydicom.Dataset({tag: ds.get_item(tag) for tag in ds.keys() if tag < _FIRST_PIXEL_TAG})
    header.file_meta = ds.file_meta
    header.preamble = ds.preamble
    implicit, little = ds.original_encoding
    header.set_original_encoding(implicit, little, ds.original_character_set)
    return pixels, header


def _read_whole(f, inst: Instance) -> pydicom.Dataset:
    ds = pydicom.dcmread(CappedReader(f), force=not inst.part10)
    if not inst.part10 and "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = UID(inst.transfer_syntax)
    return ds
