"""Pick the reader for what the user gave: NIfTI files, a BraTS case folder or a DICOM folder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from . import nifti
from .dicom import has_dicom_files, read_dicom_folder
from .errors import ModalityError, ScanError
from .library_messages import capture_library_messages
from .scan import Scan


def read_scan(
    inputs: Sequence[str | Path],
    modalities: Sequence[str],
    *,
    by_modality: Mapping[str, str | Path] | None = None,
    series_rules: Mapping[str, Sequence[str]] | None = None,
) -> Scan:
    """Read a scan from what the user gave and return it with channels in ``modalities`` order.

    ``inputs`` is one 4D NIfTI file, one NIfTI file per modality (names ending in the
    modality, e.g. ``case_t1ce.nii.gz``), a BraTS case folder, or a DICOM folder. Explicit
    per-modality files (``--t1 ...``) come in ``by_modality`` instead.
    """
    with capture_library_messages("reader") as library:
        scan = _read(inputs, tuple(modalities), by_modality, series_rules)
    if library:
        scan.source.setdefault("warnings", []).extend(library)
    return scan


def _read(inputs: Sequence[str | Path], modalities: tuple[str, ...], by_modality: Mapping[str, str | Path] | None,
          series_rules: Mapping[str, Sequence[str]] | None) -> Scan:
    """:func:`read_scan` without the capture of library messages."""
    if by_modality:
        if inputs:
            raise ModalityError("give either INPUT paths or --t1/--t1ce/--t2/--flair files, not both")
        scan = nifti.read_nifti_files({k: Path(v) for k, v in by_modality.items()}, modalities)
        return scan.select(modalities)
    if not inputs:
        raise ScanError("no input given: pass a NIfTI file, a BraTS case folder or a DICOM folder")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.exists():
            raise ScanError(f"input {p} does not exist")
    if len(paths) == 1 and paths[0].is_dir():
        return _read_folder(paths[0], modalities, series_rules)
    if any(p.is_dir() for p in paths):
        raise ScanError("give one folder, or NIfTI files, not a mix of both")
    if len(paths) == 1:
        return nifti.read_nifti_4d(paths[0], modalities)
    files = nifti.files_by_modality(paths)
    return nifti.read_nifti_files(files, modalities).select(modalities)


def _read_folder(folder: Path, modalities: tuple[str, ...], series_rules: Mapping[str, Sequence[str]] | None) -> Scan:
    """A BraTS case folder (NIfTI files named by modality), else a DICOM folder."""
    if nifti.find_case_files(folder):
        return nifti.read_brats_folder(folder, modalities).select(modalities)
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and nifti.is_nifti_name(p))
    if loose and not has_dicom_files(folder):
        shown = ", ".join(loose[:4]) + (f" and {len(loose) - 4} more" if len(loose) > 4 else "")
        raise ScanError(
            f"{folder} holds {len(loose)} NIfTI file(s) ({shown}) but none is named by its modality, and no "
            "DICOM files; name them CASE_MODALITY.nii.gz (e.g. case_t1.nii.gz, case_flair.nii.gz), pass them "
            "with --t1/--t1ce/--t2/--flair, or pass a 4D file as INPUT"
        )
    return read_dicom_folder(folder, modalities, rules=series_rules)
