"""Safety helpers: output names that stay in their folder.

A file name derived from input (a ``--name``, a UID, a file stem) holding ``../``, an
absolute path or a NUL steers a program outside the folder it should stay in (DCMTK
CVE-2022-2119/2120). This module holds small pure functions that refuse such names; they
raise :class:`~edge_infer.errors.OutputError` with one line that says how to fix the input.
The ONNX external-data checks live in :mod:`edge_infer.backends.onnx_wire`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import OutputError

#: longest output stem in UTF-8 bytes: NAME_MAX (255) minus the temporary-name prefix
#: (``.edge-infer-tmp-<pid>-``, at most 30) and the longest suffix (``_overlay.png``)
MAX_STEM_BYTES = 200

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+-]")


# -- output names ----------------------------------------------------------------------------
def stem_problem(name: str) -> str:
    """Why ``name`` cannot be an output file stem, or ``""`` if it can.

    A stem must be a plain, visible file name: no path separator, no NUL or control
    character, not ``.``/``..``, no leading dot (hidden files and the writers' temporary
    names start with one), at most :data:`MAX_STEM_BYTES` bytes in UTF-8.
    """
    if not isinstance(name, str) or not name:
        return "is empty"
    if "\x00" in name:
        return "holds a NUL character"
    if "/" in name or "\\" in name or os.sep in name or (os.altsep and os.altsep in name):
        return "holds a path separator (it must be a file name, not a path)"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "holds a control character"
    if name in (".", ".."):
        return "is a relative folder reference"
    if name.startswith("."):
        return "starts with a dot (hidden and temporary names start with one)"
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        return "is not valid Unicode text"
    if size > MAX_STEM_BYTES:
        return f"is {size} bytes long, more than {MAX_STEM_BYTES}"
    return ""


def check_stem(name: str, what: str = "--name") -> str:
    """Return ``name`` if it is a safe output stem, else raise :class:`OutputError`.

    For names a user gives (``--name``): refusing says what is wrong, where silently
    rewriting them would write somewhere the user did not ask for.
    """
    problem = stem_problem(name)
    if problem:
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise OutputError(f"{what} {shown} {problem}; give a plain file name such as 'case01'")
    return name


def sanitize_stem(text: str, fallback: str = "scan") -> str:
    """A safe output stem made from ``text`` (derived from input file names or folders).

    Every character outside ``A-Za-z0-9._+-`` becomes ``_``, leading dots are dropped, the
    result is cut to :data:`MAX_STEM_BYTES`; an empty result or ``..`` gives ``fallback``.
    """
    cleaned = _UNSAFE_CHARS.sub("_", str(text)).lstrip(".")[:MAX_STEM_BYTES]
    return cleaned if cleaned and not stem_problem(cleaned) else fallback


def output_stem(name: str | None, derived: str) -> str:
    """The stem of a run's outputs: ``name`` checked when given, else ``derived`` sanitised."""
    return check_stem(name) if name is not None else sanitize_stem(derived)


def check_inside(folder: str | Path, path: str | Path) -> Path:
    """Return ``path`` if it names a file directly inside ``folder``, else raise OutputError.

    Both are resolved (following links) before comparing, so ``folder/../x``, an absolute
    path elsewhere, or a final component that is a symbolic link out of the folder are refused.
    """
    folder_r = Path(folder).resolve()
    p = Path(path)
    if "\x00" in str(p):
        raise OutputError(f"output name {str(p)!r} holds a NUL character; give a plain file name")
    if p.is_symlink():
        raise OutputError(f"output {p} is a symbolic link; remove it, outputs are never written through links")
    if p.resolve().parent != folder_r:
        raise OutputError(f"output {p} would be written outside the output folder {folder}; give a plain file name")
    return p
