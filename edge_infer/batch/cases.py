"""Finding the cases of a batch: folders searched for BraTS case folders, NIfTI case sets and
DICOM studies (grouped by StudyInstanceUID), or a CSV/JSONL file listing cases.

A :class:`Case` carries what ``edge-infer run`` would be given for it, an id that holds no
patient data, and the ground truth when there is one (validation mode).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import InputError
from ..nifti import is_nifti_name, modality_from_name

MODALITY_COLUMNS = ("t1", "t1ce", "t2", "flair")
TRUTH_NAMES = ("seg", "truth")
SEARCHED = ("BraTS case folders and NIfTI case sets (*_t1, *_t1ce, *_t2, *_flair .nii/.nii.gz) "
            "and DICOM studies (files with a DICM preamble)")
_ID_BAD = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Case:
    """One case: ``inputs`` as ``edge-infer run`` takes them (or ``by_modality`` files)."""

    id: str
    inputs: tuple[str, ...] = ()
    by_modality: tuple[tuple[str, str], ...] = ()
    truth: str | None = None
    fingerprint: str = ""

    def modality_files(self) -> dict[str, Path] | None:
        return {m: Path(p) for m, p in self.by_modality} or None


def safe_id(text: str) -> str:
    """A case id usable as a folder name: ``[A-Za-z0-9._-]``, never empty, ``.`` or ``..``."""
    out = _ID_BAD.sub("_", text).strip("._") or "case"
    return out[:120]


def find_cases(inputs: Sequence[str | Path]) -> list[Case]:
    """All cases under ``inputs`` (folders, ``.csv`` or ``.jsonl`` files), sorted by id.

    Raises
    ------
    InputError
        an input that does not exist, holds no recognisable case (saying what was searched),
        or two cases with the same id.
    """
    if not inputs:
        raise InputError("no input given: pass folders of cases, or a .csv/.jsonl file listing cases")
    cases: list[Case] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise InputError(f"input {p} does not exist")
        if p.is_dir():
            found = search_folder(p)
        elif p.suffix.lower() == ".csv":
            found = read_listing(p, _csv_rows(p))
        elif p.suffix.lower() == ".jsonl":
            found = read_listing(p, _jsonl_rows(p))
        else:
            raise InputError(f"{p.name} is neither a folder nor a .csv/.jsonl list of cases")
        if not found:
            raise InputError(f"found no cases in {p}: searched for {SEARCHED}")
        cases.extend(found)
    seen: dict[str, Case] = {}
    for c in cases:
        if c.id in seen:
            raise InputError(f"two cases have the id {c.id!r}; give them distinct folder names or a case_id column")
        seen[c.id] = c
    return sorted((replace(c, fingerprint=fingerprint(c)) for c in cases), key=lambda c: c.id)


def fingerprint(case: Case) -> str:
    """A digest of the case's files (path, size, modification time): a resumed batch reruns a
    case whose inputs changed since its outputs were made."""
    h = hashlib.sha256()
    paths = [Path(p) for p in (*case.inputs, *(p for _, p in case.by_modality), *([case.truth] if case.truth else []))]
    for p in paths:
        files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
        for f in files:
            try:
                st = f.stat()
            except OSError:
                continue
            h.update(f"{f}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def search_folder(root: Path) -> list[Case]:
    """NIfTI cases (a folder of one case, or each case of a flat case set) and DICOM studies."""
    cases: list[Case] = []
    dicom: dict[str, list[Path]] = {}
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        here = Path(folder)
        nifti = [here / f for f in sorted(files) if is_nifti_name(Path(f))]
        cases.extend(_nifti_cases(here, nifti))
        for f in files:
            uid = _study_uid(here / f)
            if uid is not None:
                dicom.setdefault(uid, []).append(here / f)
    for uid, paths in dicom.items():
        common = Path(os.path.commonpath([str(p.parent) for p in paths]))
        cases.append(Case("dicom-" + hashlib.sha256(uid.encode()).hexdigest()[:12], (str(common),)))
    return cases


def _nifti_cases(folder: Path, files: list[Path]) -> list[Case]:
    groups: dict[str, dict[str, Path]] = {}
    truth: dict[str, Path] = {}
    for f in files:
        mod = modality_from_name(f)
        stem = _stem(f)
        if mod is not None:
            groups.setdefault(stem.rsplit("_", 1)[0], {})[mod] = f
        elif stem.rsplit("_", 1)[-1].lower() in TRUTH_NAMES:
            truth[stem.rsplit("_", 1)[0]] = f
    if len(groups) == 1:  # a BraTS case folder: `run FOLDER`, named after the folder
        prefix = next(iter(groups))
        t = truth.get(prefix)
        return [Case(safe_id(folder.name), (str(folder),), truth=str(t) if t else None)]
    return [Case(safe_id(prefix), tuple(str(p) for p in mods.values()),
                 truth=str(truth[prefix]) if prefix in truth else None) for prefix, mods in groups.items()]


def _stem(path: Path) -> str:
    name = path.name
    for suf in (".nii.gz", ".nii"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


def _study_uid(path: Path) -> str | None:
    """StudyInstanceUID of a DICOM Part 10 file (header only), or None for anything else."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            if f.read(4) != b"DICM":
                return None
        from pydicom import dcmread

        ds = dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        return str(ds.get("StudyInstanceUID", "")) or None
    except (OSError, ValueError, EOFError):
        return None


def _csv_rows(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [dict(r) for r in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot read the case list {path.name}: {exc}") from None


def _jsonl_rows(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the case list {path.name}: {exc}") from None
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                raise InputError(f"{path.name} line {n} is not a JSON object such as {{\"inputs\": \"case_folder\"}}")
            rows.append(row)
    return rows


def read_listing(path: Path, rows: Iterable[dict]) -> list[Case]:
    """Cases from CSV/JSONL rows: ``inputs`` (a path, several joined by ``;`` or a JSON list)
    or ``t1``/``t1ce``/``t2``/``flair`` columns, optional ``case_id`` and ``truth``; relative
    paths are relative to the list's folder."""
    base = path.parent
    cases = []
    for n, row in enumerate(rows, 1):
        row = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
        inputs = row.get("inputs") or ""
        items = inputs if isinstance(inputs, list) else [s for s in str(inputs).split(";") if s.strip()]
        mods = tuple((m, str(base / str(row[m]).strip())) for m in MODALITY_COLUMNS if row.get(m))
        if not items and not mods:
            raise InputError(f"{path.name} row {n} names no input: fill its 'inputs' or t1/t1ce/t2/flair columns")
        paths = tuple(str(base / str(s).strip()) for s in items)
        cid = row.get("case_id") or (Path(paths[0]).name if len(paths) == 1 else f"{path.stem}-{n:05d}")
        cid = _stem(Path(str(cid)))
        truth = row.get("truth")
        cases.append(Case(safe_id(str(cid)), () if mods else paths, mods, str(base / str(truth)) if truth else None))
    return cases
