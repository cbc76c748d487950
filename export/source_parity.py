"""Parity of an imported model against its source's own inference, on one whole volume.

The model folder is run by the runtime exactly as ``edge-infer run`` runs it (read ->
:func:`edge_infer.segmentation.segment`), once per artifact, and its label map is compared
with the label map of the source's own predictor (``nnUNetPredictor``, a MONAI bundle's
inferer) on the same volume: Dice per label. The volume is a synthetic phantom (default) or
the user's scan read by the runtime's readers; only its shape and kind are recorded, never a
file name or anything from a header.

A label whose reference mask has fewer than :data:`MIN_REFERENCE_VOXELS` voxels is reported
but not judged (Dice of a near-empty mask says nothing).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_infer.manifest import Manifest

from .errors import ParityError, SourceError
from .losses import dice
from .parity import TOLERANCE

#: the default parity volume: a skull-stripped phantom no model here was trained on
PHANTOM_SEED = 4242
PHANTOM_SHAPE = (64, 64, 48)
#: labels with fewer reference voxels are reported, not judged
MIN_REFERENCE_VOXELS = 50


@dataclass(frozen=True)
class ParityVolume:
    """A parity volume: ``data`` float32 ``[C, I, J, K]`` in the manifest's modality order,
    ``affine`` voxel -> RAS+ mm, and ``about``, what the provenance records of it."""

    data: np.ndarray
    affine: np.ndarray
    about: dict


#: ``reference(volume, case_files) -> (labels [I, J, K], valid voxels [I, J, K] or None)``
Reference = Callable[[ParityVolume, Sequence[Path]], tuple[np.ndarray, "np.ndarray | None"]]


def phantom_volume(modalities: Sequence[str], shape: Sequence[int] = PHANTOM_SHAPE,
                   seed: int = PHANTOM_SEED) -> ParityVolume:
    """A synthetic skull-stripped BraTS-like phantom (:func:`export.phantoms.make_case`)."""
    from .phantoms import make_case

    case = make_case(shape=tuple(shape), seed=seed, skull=False)
    data = np.stack([case.images[m] for m in modalities]).astype(np.float32)
    return ParityVolume(data, case.affine, {"kind": "phantom", "seed": seed, "shape": list(data.shape[1:])})


def scan_volume(paths: Sequence[str | os.PathLike], modalities: Sequence[str]) -> ParityVolume:
    """The user's scan (NIfTI files, a case folder or a DICOM folder), read by the runtime's readers."""
    from edge_infer.errors import EdgeInferError
    from edge_infer.readers import read_scan

    from .errors import DataError

    try:
        scan = read_scan([Path(p) for p in paths], modalities)
    except EdgeInferError as exc:
        raise DataError(f"--parity-scan: {str(exc).splitlines()[0]}") from None
    data = np.asarray(scan.data, np.float32)
    return ParityVolume(data, scan.affine, {"kind": "file", "inputs": len(paths), "shape": list(data.shape[1:])})


def write_volume(vol: ParityVolume, folder: Path, modalities: Sequence[str]) -> list[Path]:
    """``vol`` as one float32 NIfTI per modality, ``case/case_<modality>.nii.gz`` under ``folder``."""
    import nibabel as nib

    case = Path(folder) / "case"
    case.mkdir(parents=True, exist_ok=True)
    files = [case / f"case_{mod}.nii.gz" for mod in modalities]
    for channel, path in zip(vol.data, files, strict=True):
        nib.save(nib.Nifti1Image(channel, vol.affine), path)
    return files


def runtime_labels(folder: Path, backend: str, precision: str, files: Sequence[Path], threads: int = 1) -> np.ndarray:
    """The label map ``edge-infer run`` makes of ``files`` with one artifact of ``folder``."""
    from edge_infer.errors import EdgeInferError
    from edge_infer.model import load_model
    from edge_infer.readers import read_scan
    from edge_infer.segmentation import segment

    try:
        model = load_model(folder, backend=backend, precision=precision, threads=threads)
        return segment(read_scan(list(files), model.manifest.modalities), model).labels
    except EdgeInferError as exc:
        why = str(exc).splitlines()[0]
        raise SourceError(f"{backend}/{precision} cannot segment the parity volume: {why}") from None


def compare_labels(got: np.ndarray, want: np.ndarray, m: Manifest, valid: np.ndarray | None = None) -> dict:
    """Dice per label (by name) and the reference's voxels per label, over ``valid`` voxels."""
    if valid is not None:
        got, want = got[valid], want[valid]
    return {"dice": {lb.name: dice(got == lb.value, want == lb.value) for lb in m.labels},
            "reference_voxels": {lb.name: int((want == lb.value).sum()) for lb in m.labels}}


def judge(row: dict, precision: str) -> dict:
    """``row`` with ``min_dice`` and ``passed`` (labels under :data:`MIN_REFERENCE_VOXELS` not judged)."""
    judged = [d for name, d in row["dice"].items() if row["reference_voxels"][name] >= MIN_REFERENCE_VOXELS]
    return {**row, "min_dice": TOLERANCE[precision], "passed": all(d >= TOLERANCE[precision] for d in judged),
            "judged_labels": len(judged)}


def volume_parity(folder: Path, m: Manifest, vol: ParityVolume, reference: Reference, reference_name: str) -> dict:
    """Every artifact of ``folder`` through the runtime against ``reference`` on ``vol``.

    Returns the ``provenance["parity"]`` block (without probability differences, which
    :func:`parity_block` adds); raises :class:`ParityError` past :data:`export.parity.TOLERANCE`.
    """
    with tempfile.TemporaryDirectory(prefix="edge-infer-parity-") as tmp:
        files = write_volume(vol, Path(tmp), m.modalities)
        want, valid = reference(vol, files)
        got = {a: runtime_labels(folder, a.backend, a.precision, files) for a in m.artifacts}
        rows = {f"{a.backend}/{a.precision}": judge(compare_labels(labels, want, m, valid), a.precision)
                for a, labels in got.items()}
    block = {"reference": reference_name, "volume": vol.about, "unit": "label",
             "left_out_voxels": 0 if valid is None else int((~valid).sum()), "artifacts": rows}
    for key, row in rows.items():
        if not row["passed"]:
            worst = min(row["dice"].items(), key=lambda kv: kv[1])
            raise ParityError(f"{key} disagrees with {reference_name} on the parity volume: Dice {worst[1]:.4f} "
                              f"on {worst[0]} < {row['min_dice']}")
    return block


def tile_parity_block(verification: dict, reference_name: str, about: dict) -> dict:
    """The ``provenance["parity"]`` block of a check on tiles (:func:`export.parity.check_parity`):
    Dice per output channel and the largest probability difference, per artifact."""
    rows = {key: {k: row[k] for k in ("dice", "reference_voxels", "max_prob_diff", "min_dice", "passed")}
            for key, row in verification["artifacts"].items()}
    return {"reference": reference_name, "volume": about, "unit": "channel", "left_out_voxels": 0,
            "artifacts": rows, "probability_reference": reference_name}


def with_probabilities(block: dict, verification: dict, probability_reference: str) -> dict:
    """``block`` with each artifact's largest probability difference from the tile check."""
    rows = {key: {**row, "max_prob_diff": verification["artifacts"][key]["max_prob_diff"]}
            for key, row in block["artifacts"].items()}
    return {**block, "artifacts": rows, "probability_reference": probability_reference}


@dataclass(frozen=True)
class SourceCheck:
    """A whole-volume check against the model's source: ``reference`` (its own predictor,
    called ``name`` in the provenance) on ``volume``."""

    volume: ParityVolume
    reference: Reference
    name: str


#: what the largest probability difference of a volume check is measured against
PROBABILITY_REFERENCE = "eager PyTorch of the same network, on the verification tiles"


def source_parity(folder: Path, m: Manifest, verification: dict, check: object, about: dict,
                  reference_name: str = "eager PyTorch") -> dict:
    """The ``provenance["parity"]`` block: against ``check``'s predictor on its volume when
    ``check`` is a :class:`SourceCheck`, else the tile check's own figures."""
    if not isinstance(check, SourceCheck):
        return tile_parity_block(verification, reference_name, about)
    block = volume_parity(folder, m, check.volume, check.reference, check.name)
    return with_probabilities(block, verification, PROBABILITY_REFERENCE)
