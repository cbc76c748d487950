"""NIfTI readers: one 4D file, one file per modality, or a BraTS case folder.

Headers are checked before any voxel is read: a declared size beyond available memory is
refused before allocation, and a file shorter than its header declares is reported as
truncated.
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from . import gz
from .crop import Profiles, ProfileSum, foreground_profiles, permute_profiles, union_profiles
from .errors import ModalityError, ScanError
from .moments import Moments, MomentsSum, memory_order, moments_of, slabs
from .scan import (
    Scan,
    canonical_modality,
    check_finite,
    check_is_volume,
    check_same_grid,
    check_volume_size,
)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
_CASE_RE = re.compile(r"^(?P<case>.+?)[_-](?P<mod>[A-Za-z0-9]+)\.nii(\.gz)?$")


def is_nifti_name(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def modality_from_name(path: Path) -> str | None:
    """The modality a file name ends in (``BraTS_001_t1ce.nii.gz`` -> ``t1ce``), or None."""
    m = _CASE_RE.match(path.name)
    return canonical_modality(m.group("mod")) if m else None


def files_by_modality(paths: Sequence[Path]) -> dict[str, Path]:
    """Map NIfTI files to modalities by their name suffix; refuse unknown or duplicate ones."""
    out: dict[str, Path] = {}
    for p in paths:
        if not is_nifti_name(p):
            raise ScanError(f"{p.name} is not a NIfTI file name (.nii or .nii.gz)")
        mod = modality_from_name(p)
        if mod is None:
            raise ModalityError(
                f"cannot tell the modality of {p.name}: name files *_t1, *_t1ce, *_t2, *_flair "
                "or pass them as --t1/--t1ce/--t2/--flair"
            )
        if mod in out:
            raise ModalityError(f"modality {mod} given twice ({out[mod].name} and {p.name})")
        out[mod] = p
    return out


def find_case_files(folder: Path) -> dict[str, Path]:
    """NIfTI image files of a BraTS case folder by modality (the ``*_seg`` file is ignored)."""
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and is_nifti_name(p):
            mod = modality_from_name(p)
            if mod is not None:
                found.setdefault(mod, []).append(p)
    dup = {m: ps for m, ps in found.items() if len(ps) > 1}
    if dup:
        m, ps = next(iter(dup.items()))
        raise ModalityError(f"folder {folder.name} holds several {m} files: {', '.join(p.name for p in ps)}")
    return {m: ps[0] for m, ps in found.items()}


#: header extensions (between the header and the voxels) larger than this are refused
MAX_EXTENSION_BYTES = 16 << 20
#: header size -> (offset and format of vox_offset), (offset and format of dim[0]), NIfTI-1 and -2
_HEADER_LAYOUTS = {348: ((108, "f"), (40, "h")), 540: ((168, "q"), (16, "q"))}


def check_extensions(path: Path) -> None:
    """Walk the header extensions before nibabel reads them, refusing hostile sizes.

    nibabel reads each extension's declared ``esize`` in one call, and an ``esize`` below 8
    makes it read the whole rest of the stream; in a ``.nii.gz`` that inflates an arbitrarily
    large (e.g. 1000:1) payload into memory before any size check. Here the extension area
    (``vox_offset`` minus the header) must be at most :data:`MAX_EXTENSION_BYTES`, and every
    ``esize`` must be at least 8 and fit in what remains of it. Files that are not NIfTI are
    left for nibabel to refuse.

    Raises
    ------
    ScanError
        naming the file and the declared sizes.
    """
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            first = f.read(4)
            size = next((struct.unpack(e + "i", first)[0] for e in "<>" if len(first) == 4
                         and struct.unpack(e + "i", first)[0] in _HEADER_LAYOUTS), None)
            if size is None:
                return
            rest = f.read(size - 4 + 4)
            if len(rest) < size:
                return  # nibabel reports the short header
            layout = _HEADER_LAYOUTS[size]
            endian = _guessed_endian(first + rest, size)
            (offset_at, fmt), _ = layout
            vox_offset = struct.unpack_from(endian + fmt, first + rest, offset_at)[0]
            if rest[size - 4] == 0:
                return  # no extensions
            area = _extension_area(vox_offset, size + 4, path)
            to_end = area < 0  # vox_offset inside the header: nibabel reads extensions to the end
            room = MAX_EXTENSION_BYTES if to_end else area
            while to_end or room >= 16:
                head = f.read(8)
                if len(head) < 8:
                    return  # the end of the extensions, or a short one nibabel reports
                esize = struct.unpack(endian + "i", head[:4])[0]
                if esize < 8 or esize > room:
                    raise ScanError(
                        f"{path.name} has a header extension of {esize} bytes where {room} bytes are left for "
                        "extensions; the header is corrupt or hostile, re-export the file"
                    )
                _skip(f, esize - 8)
                room -= esize
    except (OSError, EOFError, zlib.error, struct.error) as exc:
        raise ScanError(f"{path.name} is not a readable NIfTI file ({_first_line(exc)})") from None


def _guessed_endian(header: bytes, size: int) -> str:
    """The byte order nibabel will read the header in (``AnalyzeHeader.guessed_endian``):
    native if ``dim[0]`` read natively is 1..7, or it is 0 and ``sizeof_hdr`` reads right
    natively; swapped otherwise. It must be the same, or the walk checks other sizes than
    nibabel then reads."""
    native, swapped = ("<", ">") if sys.byteorder == "little" else (">", "<")
    at, fmt = _HEADER_LAYOUTS[size][1]
    dim0 = struct.unpack_from(native + fmt, header, at)[0]
    if dim0 == 0:
        return native if struct.unpack_from(native + "i", header, 0)[0] == size else swapped
    return native if 1 <= dim0 <= 7 else swapped


def _extension_area(vox_offset: float, start: int, path: Path) -> int:
    """Bytes between the header (and extension flag) and the voxels, bounded."""
    if not np.isfinite(vox_offset):
        raise ScanError(f"{path.name} has a non-finite vox_offset {vox_offset}; the header is corrupt")
    area = int(vox_offset) - start
    if area > MAX_EXTENSION_BYTES:
        raise ScanError(
            f"{path.name} declares {area} bytes of header extensions (vox_offset {int(vox_offset)}), more than "
            f"{MAX_EXTENSION_BYTES}; the header is corrupt or hostile, re-export the file"
        )
    return area


def _skip(f, n: int, chunk: int = 1 << 16) -> None:
    """Read and drop ``n`` bytes in chunks (a gzip stream cannot seek cheaply)."""
    while n > 0:
        got = len(f.read(min(chunk, n)))
        if got == 0:
            return
        n -= got


def load_header(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI file lazily and validate its header before any voxel is read."""
    if not path.is_file():
        raise ScanError(f"{path} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise ScanError(f"{path.name} is empty (0 bytes)")
    check_extensions(path)
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises many types for foreign or corrupt files
        raise ScanError(f"{path.name} is not a readable NIfTI file ({_first_line(exc)})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise ScanError(f"{path.name} is a {type(img).__name__}, not NIfTI; convert it to NIfTI first")
    dtype = img.header.get_data_dtype()
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise ScanError(
            f"{path.name} stores {_dtype_name(dtype)} voxels; edge-infer reads real-valued scalar images "
            "(integer or float), convert the file first"
        )
    shape = img.header.get_data_shape()
    check_volume_size(shape[:3], int(np.prod(shape[3:], dtype=np.int64)) if len(shape) > 3 else 1, path.name)
    if not path.name.lower().endswith(".gz"):
        # the offset nibabel reads voxels from (its proxy's, which keeps a vox_offset past 2^63
        # that get_data_offset() reports as 0; numpy's memmap then overflows)
        offset = int(getattr(img.dataobj, "offset", img.header.get_data_offset()))
        need = offset + int(np.prod(shape, dtype=np.int64)) * img.header.get_data_dtype().itemsize
        have = path.stat().st_size
        if have < need:
            raise ScanError(f"{path.name} is truncated: its header declares {need} bytes, the file has {have}")
    return img


def _dtype_name(dtype: np.dtype) -> str:
    if dtype.fields is not None:
        return "colour (" + "".join(dtype.names or ()) + ")"
    return {"c": "complex", "V": "raw byte", "O": "object", "S": "text", "U": "text"}.get(dtype.kind, str(dtype))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _read_exactly(f, view: memoryview, got: int, total: int) -> int:
    """Fill ``view`` from ``f``; ``got`` bytes of ``total`` were read before. Raises EOFError
    when the stream ends first."""
    n = 0
    while n < len(view):
        k = f.readinto(view[n:])
        if not k:
            raise EOFError(f"{got + n} of {total} voxel bytes")
        n += k
    return got + n


def _read_gz_isal(igzip, img: nib.Nifti1Image, path: Path, out: np.ndarray) -> tuple[Moments, Profiles]:
    """Stream exactly the declared voxels of a ``.nii.gz`` through igzip into ``out``, a slab
    of planes at a time through one small buffer, taking each slab's moments (and occupancy
    profiles, :mod:`edge_infer.crop`) while it is in cache; the read is bounded by the header
    (a gzip bomb is never inflated past it)."""
    from nibabel.volumeutils import apply_read_scaling

    proxy = img.dataobj
    if not isinstance(proxy, nib.arrayproxy.ArrayProxy):  # the caller checks; an in-memory image has no stream
        raise TypeError("_read_gz_isal needs an image backed by a file (an ArrayProxy)")
    shape = tuple(int(s) for s in proxy.shape)
    dst = memory_order(out)                                # planes in the file's own voxel order
    streamed = proxy.order == "F" and dst.shape == shape[::-1] and dst.flags.c_contiguous
    n_planes = shape[-1] if streamed else 1                # else: the whole volume in one piece
    plane = int(np.prod(shape, dtype=np.int64)) // max(n_planes, 1)
    ranges = slabs(n_planes, plane, out.itemsize)
    raw = np.empty(plane * max(r.stop - r.start for r in ranges), dtype=proxy.dtype)
    total, got = plane * n_planes * proxy.dtype.itemsize, 0
    acc = MomentsSum(out.size)
    prof = ProfileSum(dst.shape)                           # issue 15: the crop box from the read pass
    scaled = proxy.slope != 1.0 or proxy.inter != 0.0
    # small integers are exact in float32: their moments can be taken on the (smaller) raw slab
    exact = not scaled and raw.dtype.kind in "iu" and raw.dtype.itemsize <= 2
    with igzip.open(path, "rb") as f:
        _skip(f, int(proxy.offset))
        for r in ranges:
            chunk = raw[:plane * (r.stop - r.start)]
            got = _read_exactly(f, chunk.data.cast("B"), got, total)
            if scaled:                                     # nibabel's own scaling: both paths give the same floats
                chunk = apply_read_scaling(chunk, proxy.slope, proxy.inter)
            if not streamed:
                out[...] = chunk.reshape(shape, order=proxy.order)
                return moments_of(out), foreground_profiles(out[None])
            dst[r] = chunk.reshape(dst[r].shape)
            acc.add(chunk if exact else dst[r])
            prof.add(r.start, dst[r])                      # issue 15: occupancy, slab in cache
    order = np.argsort([-abs(st) for st in out.strides], kind="stable")   # memory_order's axes
    return acc.result(), permute_profiles(prof.result(), [int(a) for a in order])


def _read_voxels(img: nib.Nifti1Image, path: Path, out: np.ndarray) -> tuple[Moments, Profiles]:
    """Read (and scale) the voxels into ``out`` (float32), turning decode errors into ScanError;
    returns their :class:`~edge_infer.moments.Moments` and occupancy profiles
    (:func:`edge_infer.crop.foreground_profiles`), taken in this file's own thread.

    ``.nii.gz`` goes through igzip when python-isal is installed, else through nibabel (zlib).
    """
    igzip = gz.igzip() if path.name.lower().endswith(".gz") else None
    try:
        if igzip is not None and isinstance(img.dataobj, nib.arrayproxy.ArrayProxy):
            return _read_gz_isal(igzip, img, path, out)
        out[...] = np.asarray(img.dataobj)
    except (EOFError, OSError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise ScanError(f"{path.name} is truncated or corrupt ({_first_line(exc)}); re-export or re-copy it") from None
    return moments_of(out), foreground_profiles(out[None])


def _source(paths: dict[str, Path], img: nib.Nifti1Image, kind: str) -> dict:
    return {"format": "nifti", "layout": kind, "files": {m: p.name for m, p in paths.items()},
            "shape": [int(s) for s in img.shape[:3]]}


def _reference(img: nib.Nifti1Image) -> dict:
    hdr = img.header
    return {"nifti": {"qform_code": int(hdr["qform_code"]), "sform_code": int(hdr["sform_code"]),
                      "xyzt_units": int(hdr["xyzt_units"])}}


def read_nifti_files(files: dict[str, Path], order: Sequence[str] = ()) -> Scan:
    """Read one 3D NIfTI file per modality into one scan; all must share a grid.

    Channels come in ``order`` first (the model's modality order, so no reordering copy is
    needed later), then any others. Voxels are stored in the files' own (Fortran) order, so
    reading is a sequential copy; the array is indexed ``[C, I, J, K]`` as always.
    """
    if not files:
        raise ModalityError("no modality files given")
    files = {**{m: files[m] for m in order if m in files}, **files}
    imgs = {m: load_header(p) for m, p in files.items()}
    for m, img in imgs.items():
        check_is_volume(img.shape, files[m].name)
    check_same_grid({m: tuple(i.shape) for m, i in imgs.items()}, {m: i.affine for m, i in imgs.items()})
    first = next(iter(imgs.values()))
    check_volume_size(first.shape, len(imgs), "the scan")
    data = np.empty((len(imgs), *first.shape[::-1]), dtype=np.float32).transpose(0, 3, 2, 1)
    # one thread per file: zlib inflation releases the GIL, so gzipped modalities decode in parallel
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(imgs), os.cpu_count() or 1)) as pool:
        jobs = [pool.submit(_read_voxels, img, files[m], data[c]) for c, (m, img) in enumerate(imgs.items())]
        results = [job.result() for job in jobs]
    moments = tuple(mo for mo, _ in results)
    mods = tuple(imgs)
    check_finite(data, mods, moments)
    return Scan(data, np.asarray(first.affine, dtype=np.float64), mods,
                _source(files, first, "per-modality"), _reference(first), moments=moments,
                profiles=union_profiles(*(pr for _, pr in results)))


def read_brats_folder(folder: Path, order: Sequence[str] = ()) -> Scan:
    """Read a BraTS case folder (``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair`` NIfTI files)."""
    files = find_case_files(folder)
    if not files:
        raise ScanError(f"folder {folder.name} holds no *_t1/_t1ce/_t2/_flair NIfTI files")
    scan = read_nifti_files(files, order)
    scan.source["layout"] = "brats-folder"
    return scan


def read_nifti_4d(path: Path, modalities: Sequence[str]) -> Scan:
    """Read one NIfTI file: 4D with modalities on the last axis in ``modalities`` order,
    or 3D when the model takes a single modality."""
    if not is_nifti_name(path):
        raise ScanError(f"{path.name} is neither NIfTI (.nii, .nii.gz) nor a folder; give a NIfTI file, "
                        "a BraTS case folder or a DICOM folder")
    img = load_header(path)
    shape = img.shape
    mods = tuple(modalities)
    if len(shape) == 3 or (len(shape) == 4 and shape[3] == 1):
        if len(mods) != 1:
            one = modality_from_name(path)
            raise ModalityError(
                f"{path.name} holds one volume{f' ({one})' if one else ''} but the model needs "
                f"{len(mods)} modalities ({', '.join(mods)}): give one file per modality or a 4D file"
            )
        check_is_volume(shape[:3], path.name)
        data = np.empty((1, *shape[:3]), dtype=np.float32)
        _read_voxels(img, path, out=data[0].reshape(shape))
    elif len(shape) == 4:
        check_is_volume(shape[:3], path.name)
        if shape[3] != len(mods):
            raise ModalityError(
                f"{path.name} holds {shape[3]} volumes on its 4th axis but the model needs "
                f"{len(mods)} ({', '.join(mods)}, in that order)"
            )
        data = np.empty((len(mods), *shape[:3]), dtype=np.float32)
        try:
            raw = np.asarray(img.dataobj)
        except (EOFError, OSError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
            raise ScanError(f"{path.name} is truncated or corrupt ({_first_line(exc)}); "
                            "re-export or re-copy it") from None
        for c in range(len(mods)):
            data[c] = raw[..., c]
        del raw
    else:
        raise ScanError(f"{path.name} has {len(shape)} dimensions; edge-infer reads 3D or 4D NIfTI")
    check_finite(data, mods)
    return Scan(data, np.asarray(img.affine, dtype=np.float64), mods,
                {"format": "nifti", "layout": "4d", "files": {"all": path.name}, "shape": [int(s) for s in shape[:3]]},
                _reference(img), profiles=foreground_profiles(data))  # issue 15: the crop box
