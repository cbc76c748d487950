"""A case's outputs, rendered once: mask NIfTI, DICOM SEG, overlay PNG and the JSON report
as named bytes (:func:`render_outputs`), then committed atomically (:func:`commit_outputs`).

``edge-infer run`` commits them into its output folder; the DICOM node hands the same named
bytes to its outbox; ``edge-infer batch`` goes through :func:`edge_infer.run.run_case`.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import OutputError
from .model import LoadedModel
from .report import Report, provenance
from .scan import Scan
from .segmentation import Segmentation
from .writers import commit_files, nifti_mask_bytes, overlay_montage, png_bytes, prepare_output_dir, report_bytes

#: output kind -> file-name suffix after the case's stem, in the order they are listed
SUFFIXES = {"mask": "_mask.nii.gz", "seg": "_seg.dcm", "report": "_report.json", "overlay": "_overlay.png"}


@dataclass(frozen=True)
class Case:
    """A segmented scan with the model that segmented it: what every output is rendered from."""

    scan: Scan
    seg: Segmentation
    model: LoadedModel
    #: the DICOM source headers read ahead, for the SEG (:func:`edge_infer.seg.seg_bytes`)
    source_headers: Callable[[str], Any] | None = None

    @property
    def provenance(self) -> dict[str, str]:
        return provenance(self.model)


def output_names(stem: str, formats: Sequence[str], overlay: bool = False) -> dict[str, str]:
    """Output kind -> file name: ``mask`` (format ``nifti``), ``seg``, always ``report``, ``overlay``."""
    kinds = ["mask"] * ("nifti" in formats) + ["seg"] * ("seg" in formats) + ["report"] + ["overlay"] * overlay
    return {k: stem + SUFFIXES[k] for k in kinds}


def check_formats(scan: Scan, formats: Sequence[str]) -> None:
    """Refuse a SEG that cannot be written (a scan that is not DICOM, a DICOM reference the SEG
    writer cannot use) before any inference."""
    if "seg" in formats:
        from .seg import NOT_DICOM, check_seg_feasible

        if scan.source.get("format") != "dicom":
            raise OutputError(NOT_DICOM)
        check_seg_feasible(scan)


@dataclass(frozen=True)
class Rendered:
    """A case's outputs as file name -> bytes (the report's JSON last), and the report itself."""

    files: dict[str, bytes]
    report: Report


def render_outputs(case: Case, names: dict[str, str], report: Callable[[Case], Report]) -> Rendered:
    """Render every output ``names`` lists to bytes, file name -> bytes.

    The report comes last, from ``report(case)``, so that it records the memory and time of
    rendering the others (and a budget check on it can still refuse the case before anything
    is written).
    """
    prov = case.provenance
    files: dict[str, bytes] = {}
    if "mask" in names:
        files[names["mask"]] = nifti_mask_bytes(case.seg.labels, case.scan.affine, prov,
                                                case.scan.reference.get("nifti"))
    if "seg" in names:
        from .seg import seg_bytes

        with gc_paused():
            files[names["seg"]] = seg_bytes(case.scan, case.seg.labels, case.model.manifest, prov, case.source_headers)
    if "overlay" in names:
        files[names["overlay"]] = overlay_bytes(case.scan, case.seg, prov, case.model.manifest.labels)
    made = report(case)
    files[names["report"]] = report_bytes(made.to_dict())
    return Rendered(files, made)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the block, then restore it.

    For building a DICOM SEG: highdicom and pydicom allocate ~100k objects that all live to
    its end (under 1 MB of cyclic garbage is left), so the collections they trigger free next
    to nothing. In the node, the first SEG after start ran 315 collections (2 full) taking
    0.27-0.31 s of its 0.8 s; later ones about 0.01 s.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def commit_outputs(files: dict[str, bytes], out_dir: Path) -> dict[str, Path]:
    """Create ``out_dir`` and place every file in it atomically (all or none); file name -> path."""
    out = prepare_output_dir(Path(out_dir))
    commit_files({out / name: data for name, data in files.items()}, folder=out)
    return {name: out / name for name in files}


def overlay_bytes(scan: Scan, seg: Segmentation, prov: dict[str, str], labels: Sequence = ()) -> bytes:
    """PNG montage of the mask over FLAIR (or the first channel), in RAS display orientation, with
    the input's slice index on each tile and a colour key naming the manifest's ``labels``."""
    from .prepare import apply_orientation, orientation_transform

    if scan.released:
        raise RuntimeError("overlay_bytes needs the scan's voxels; segment() was told to release them")
    ch = scan.modalities.index("flair") if "flair" in scan.modalities else 0
    tf = orientation_transform(scan.affine, "RAS")
    img = apply_orientation(scan.data[ch], tf)
    lab = apply_orientation(seg.labels, tf)
    text = {"Software": prov["software"],
            "Comment": f"{prov['model']} {prov['model_version']} sha256:{prov['model_sha256']}"}
    names = {int(lb.value): lb.name for lb in labels}
    return png_bytes(overlay_montage(np.asarray(img), np.asarray(lab), label_names=names, transform=tf), text=text)


def case_name(scan: Scan, inputs: Sequence[str | Path]) -> str:
    """A file-name stem for the outputs that holds no patient data from DICOM headers."""
    src = scan.source
    if src.get("format") == "dicom":
        return "dicom-" + str(src.get("study_uid_sha256", "series"))[:12]
    files = list(src.get("files", {}).values())
    if src.get("layout") == "brats-folder" and inputs:
        return Path(inputs[0]).name
    if files:
        name = files[0]
        for suf in (".nii.gz", ".nii"):
            if name.endswith(suf):
                name = name[: -len(suf)]
        if src.get("layout") != "4d":
            name = name.rsplit("_", 1)[0] if "_" in name else name
        return name or "scan"
    return "scan"
