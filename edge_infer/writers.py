"""Writers: NIfTI mask, JSON report, PNG overlay montage, and atomic file placement.

Writers render bytes; :func:`commit_files` places a set of files atomically: each is written
to a temporary name in the destination folder, flushed and fsynced, and only when all are
written are they renamed to their final names. A failure leaves no file under a final name.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from . import gz
from .bitmap_text import GLYPH_H, draw_text, text_width
from .errors import OutputError

TMP_MARK = ".edge-infer-tmp-"


# -- atomic placement ----------------------------------------------------------------------
def write_synced(path: Path, data: bytes) -> Path:
    """Write ``data`` to a new file ``path`` and fsync it; on any failure remove it and re-raise.

    The building block of every crash-safe write here: callers write under a temporary
    name, then rename to the final one and :func:`fsync_dir` the folder.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return path


def _write_tmp(final: Path, data: bytes) -> Path:
    return write_synced(final.with_name(f"{TMP_MARK}{os.getpid()}-{final.name}"), data)


def commit_files(files: dict[Path, bytes], folder: Path | None = None) -> list[Path]:
    """Write every ``path -> bytes`` atomically; all or none appear under their final names.

    Each file is written under a temporary name, flushed and fsynced; only then are they
    renamed, one after the other, and the folder fsynced. A failure while writing leaves no
    new file under a final name. A SIGKILL during the renames can leave some files renamed
    and others still temporary (cleaned at the next start); no final name ever holds a
    partial file.

    Parameters
    ----------
    files : final path -> content
    folder : when given, every final path must name a file directly inside it (no ``..``,
        no absolute path elsewhere, no symbolic link): see :func:`edge_infer.safety.check_inside`

    Raises
    ------
    OutputError
        A path outside ``folder``, a NUL in a name, no space left, or any other write error.
    """
    if folder is not None:
        from .safety import check_inside

        for final in files:
            check_inside(folder, final)
    for final in files:
        if "\x00" in str(final):
            raise OutputError(f"output name {str(final)!r} holds a NUL character; give a plain file name")
    where = next(iter(files)).parent
    tmps: list[tuple[Path, Path]] = []
    try:
        for final, data in files.items():
            tmps.append((_write_tmp(final, data), final))
        for tmp, final in tmps:
            os.replace(tmp, final)
    except OSError as exc:
        for tmp, _ in tmps:
            tmp.unlink(missing_ok=True)
        raise _output_error(exc, where) from None
    fsync_dir(where)
    return [final for _, final in tmps]


def _output_error(exc: OSError, folder: Path) -> OutputError:
    """One line for a failed write: no space, no quota, too long a name, or the OS's reason."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(f"no space left on the device holding {folder}; free space or choose another -o folder")
    if exc.errno == errno.ENAMETOOLONG:
        return OutputError(f"an output file name in {folder} is too long; choose a shorter --name")
    return OutputError(f"cannot write to {folder}: {exc.strerror or exc}")


def fsync_dir(folder: Path, strict: bool = False) -> None:
    """fsync a folder so renames into it survive a power cut.

    Best effort (file systems that cannot fsync a folder are let be) unless ``strict``: the
    DICOM node acknowledges an instance only once this has succeeded.
    """
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        os.close(fd)


def clean_stale_temporaries(folder: Path) -> list[Path]:
    """Remove temporaries a killed run left in ``folder``; returns what was removed.

    A temporary is named ``.edge-infer-tmp-<pid>-<final name>``; one whose process is still
    alive (another run writing into the same folder right now) is left alone.
    """
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(TMP_MARK) and p.is_file() and not p.is_symlink() and not _writer_alive(p.name):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


def _writer_alive(name: str) -> bool:
    """Whether the process that a temporary's name records is alive (and not this one)."""
    pid_text = name[len(TMP_MARK):].split("-", 1)[0]
    if not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def check_output_dir(out_dir: Path) -> None:
    """Fail early (before any work) if ``out_dir`` cannot become the output folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output path {out_dir} exists and is not a folder; give a folder with -o")
    probe = out_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK):
        raise OutputError(f"output folder {out_dir} cannot be created or written ({probe} is not writable)")


def prepare_output_dir(out_dir: Path) -> Path:
    """Create the output folder (and parents) and clean temporaries a killed run left there."""
    check_output_dir(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {out_dir}: {exc.strerror or exc}") from None
    clean_stale_temporaries(out_dir)
    return out_dir


# -- NIfTI ---------------------------------------------------------------------------------
def nifti_mask_bytes(mask: np.ndarray, affine: np.ndarray, provenance: dict, codes: dict | None = None) -> bytes:
    """A gzipped NIfTI-1 label map on the given grid, with the model's identity in the
    header description and in a JSON comment extension (ecode 6). Deterministic bytes."""
    img = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), affine)
    codes = codes or {}
    img.set_qform(affine, code=int(codes.get("qform_code") or 1))
    img.set_sform(affine, code=int(codes.get("sform_code") or 1))
    hdr = img.header
    hdr.set_xyzt_units("mm")
    hdr["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    model = f"{provenance.get('model', '')} {provenance.get('model_version', '')}"
    descrip = f"edge-infer {model} sha256:{provenance.get('model_sha256', '')[:12]}"
    hdr["descrip"] = descrip.encode("ascii", "replace")[:79]
    ext = nib.nifti1.Nifti1Extension(6, json.dumps(provenance, sort_keys=True).encode("utf-8"))
    hdr.extensions.append(ext)
    raw = img.to_bytes()
    return gz.compress(raw, level=1)  # label maps: level 1 is fast, files still small


# -- JSON report ---------------------------------------------------------------------------
def report_bytes(report: dict) -> bytes:
    return (json.dumps(report, indent=2, sort_keys=False, default=_json_default) + "\n").encode("utf-8")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


# -- PNG overlay ---------------------------------------------------------------------------
LABEL_COLOURS = {1: (255, 64, 64), 2: (64, 200, 64), 3: (64, 160, 255), 4: (255, 220, 0)}


def png_bytes(rgb: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """Encode an ``[H, W, 3]`` uint8 image as PNG (zlib, no dependencies), with optional
    ``tEXt`` chunks (Latin-1 keywords and values)."""
    h, w, _ = rgb.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rgb.reshape(h, w * 3)], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    texts = b"".join(chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1", "replace"))
                     for k, v in (text or {}).items())
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + texts
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def overlay_montage(image: np.ndarray, labels: np.ndarray, n: int = 12, cols: int = 4, alpha: float = 0.45,
                    label_names: dict[int, str] | None = None, transform: np.ndarray | None = None) -> np.ndarray:
    """An RGB montage of ``n`` axial slices (last axis of RAS-oriented arrays ``[I, J, K]``),
    evenly spread over the mask's extent (or the volume when the mask is empty), anterior up.

    Each tile shows its slice index in the input file (``transform``, the nibabel
    orientation transform that made the RAS arrays, maps it back; without it the index of
    the RAS array); below the tiles a colour key names each label (``label_names``, value ->
    name; without it the label values found in the mask).
    """
    k_any = np.flatnonzero(labels.reshape(-1, labels.shape[-1]).any(axis=0))
    lo, hi = (int(k_any[0]), int(k_any[-1])) if k_any.size else (0, labels.shape[-1] - 1)
    ks = np.unique(np.linspace(lo, hi, num=min(n, hi - lo + 1)).round().astype(int))
    vmax = float(np.percentile(image[image > 0], 99.5)) if np.any(image > 0) else 1.0
    axis, numbers = input_slice_numbers(transform, labels.shape[-1])
    scale = max(1, min(labels.shape[:2]) // 100)
    tiles = []
    for k in ks:
        g = np.clip(image[:, :, k] / max(vmax, 1e-6), 0, 1)
        rgb = np.repeat((g * 255)[..., None], 3, axis=-1)
        lab = labels[:, :, k]
        for value, colour in LABEL_COLOURS.items():
            sel = lab == value
            rgb[sel] = (1 - alpha) * rgb[sel] + alpha * np.asarray(colour, np.float32)
        tile = np.rot90(rgb).astype(np.uint8)  # i -> columns, anterior (j) up
        draw_text(tile, f"{axis}={numbers[k]}", 2 * scale, 2 * scale, scale)
        tiles.append(tile)
    rows = -(-len(tiles) // cols)
    h, w = tiles[0].shape[:2]
    canvas = np.zeros((rows * h, cols * w, 3), np.uint8)
    for t, tile in enumerate(tiles):
        r, c = divmod(t, cols)
        canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    if label_names is None:
        label_names = {int(v): str(int(v)) for v in np.unique(labels) if v}
    return np.concatenate([canvas, colour_key(label_names, canvas.shape[1], scale)])


def input_slice_numbers(transform: np.ndarray | None, n: int) -> tuple[str, np.ndarray]:
    """``(axis letter, index)``: for each of the ``n`` slices along the RAS array's last axis,
    its index along the input file's axis (``i``, ``j`` or ``k``) that became it, by the
    nibabel orientation ``transform`` (rows: input axis -> ``[output axis, flip]``)."""
    idx = np.arange(n)
    if transform is None:
        return "k", idx
    src = int(np.flatnonzero(np.asarray(transform)[:, 0] == 2)[0])
    return "ijk"[src], idx[::-1] if transform[src][1] == -1 else idx


def colour_key(label_names: dict[int, str], width: int, scale: int = 1) -> np.ndarray:
    """A black ``[H, width, 3]`` strip with a colour swatch and the name of each label that
    has an overlay colour, left to right, wrapping onto further lines when ``width`` is full."""
    items = [(LABEL_COLOURS[v], f"{v} {label_names[v].replace('_', ' ')}") for v in sorted(label_names)
             if v in LABEL_COLOURS]
    pad, line = 3 * scale, (GLYPH_H + 4) * scale
    places, x, y = [], pad, pad
    for colour, text in items:
        need = line + text_width(text, scale) + 2 * pad
        if x > pad and x + need > width:
            x, y = pad, y + line
        places.append((colour, text, x, y))
        x += need
    strip = np.zeros((y + line + pad, width, 3), np.uint8)
    for colour, text, x, y in places:
        strip[y:y + GLYPH_H * scale, x:x + GLYPH_H * scale] = colour
        draw_text(strip, text, y, x + GLYPH_H * scale + pad, scale, outline=False)
    return strip
