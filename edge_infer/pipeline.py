"""The runtime's data flow: read -> prepare -> plan -> infer -> finish -> write -> report.

:func:`segment` is the in-memory core (a Scan and a loaded model in, a label map on the
scan's own grid out); :func:`run_case` adds reading, writing and the report around it.
"""

from __future__ import annotations

import datetime as _dt
import resource
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import __version__
from .engines import run_slices, run_windows
from .errors import ScanError
from .finish import clean_labels, label_volumes_ml, labels_from_regions, regions_from_probabilities, voxel_volume_ml
from .model import LoadedModel, load_model
from .plan import Mode, Plan, make_plan
from .prepare import Prepared, crop, pad, pad_widths, prepare, restore_mask
from .scan import Scan, read_scan
from .writers import check_output_dir, commit_files, nifti_mask_bytes, overlay_montage, png_bytes, prepare_output_dir, report_bytes


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Timer:
    """Wall time per named stage, in seconds."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0


@dataclass
class Segmentation:
    """A label map on the scan's grid, with what produced it."""

    labels: np.ndarray
    plan: Plan
    thresholds: tuple[float, ...]
    volumes_ml: dict[str, float]
    prepared: Prepared
    timings: dict[str, float] = field(default_factory=dict)
    backend_seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


def padding_for(m, shape: tuple[int, int, int]) -> list[tuple[int, int]]:
    """Padding a prepared volume needs for the model: tile minimum and ``divisible_by``."""
    if m.dims == 2:
        plane = [ax for ax in range(3) if ax != m.slice_axis]
        minimum, multiple = [1, 1, 1], [1, 1, 1]
        for ax, t in zip(plane, m.tile or (1, 1)):
            minimum[ax] = t
            multiple[ax] = m.divisible_by
        widths = pad_widths(shape, tuple(minimum), tuple(multiple))
        if m.tile is not None:
            for ax, t in zip(plane, m.tile):
                if shape[ax] > t:
                    raise ScanError(
                        f"the prepared scan is {shape[ax]} voxels along axis {ax} but the model takes "
                        f"fixed {t}-voxel slices; use a model with dynamic input size or crop the scan"
                    )
        return widths
    return pad_widths(shape, tuple(m.tile), (m.divisible_by,) * 3)


def check_enough_slices(m, prep: Prepared) -> None:
    """A 3D model needs a volume at least half its tile thick along every axis."""
    if m.dims == 3:
        for ax, (n, t) in enumerate(zip(prep.data.shape[1:], m.tile)):
            if n * 2 < t:
                raise ScanError(
                    f"the scan has only {n} voxels along axis {ax} at the model's spacing; the 3D model "
                    f"needs at least {(t + 1) // 2} (its tile is {t}); use a 2D model for thin stacks"
                )


def segment(scan: Scan, model: LoadedModel, *, threshold: float | None = None, keep_largest: bool = False,
            min_blob_mm3: float = 0.0, batch: int | None = None, overlap: float | None = None,
            quiet: bool = True) -> Segmentation:
    """Segment ``scan`` with ``model``; the labels lie on the scan's own grid."""
    m = model.manifest
    timer = Timer()
    scan = scan.select(m.modalities)
    with timer.stage("prepare"):
        prep = prepare(scan.data, scan.affine, m.orientation, m.spacing_mm, m.normalization)
        check_enough_slices(m, prep)
        widths = padding_for(m, prep.data.shape[1:])
        volume = pad(prep.data, widths)
    plan = make_plan(m, volume.shape[1:], backend=model.artifact.backend, precision=model.artifact.precision,
                     threads=model.backend.threads, batch=batch, overlap=overlap)
    probs = np.empty((len(m.channels), *volume.shape[1:]), dtype=np.float32)
    backend_time = [0.0]

    def run(x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        y = model.backend.run(x)
        backend_time[0] += time.perf_counter() - t0
        return y

    channels_last = not m.layout.startswith("NC")
    with timer.stage("infer"), _progress(plan, quiet) as bar:
        if plan.mode is Mode.SLICES:
            run_slices(volume, run, probs, axis=m.slice_axis, batch=plan.batch, activation=m.activation,
                       channels_last=channels_last, progress=bar)
        else:
            run_windows(volume, run, probs, tile=plan.tile, overlap=plan.overlap, batch=plan.batch,
                        activation=m.activation, channels_last=channels_last, progress=bar)
    del volume
    thresholds = m.thresholds(threshold)
    with timer.stage("finish"):
        regions = regions_from_probabilities(crop(probs, widths), thresholds, m.activation)
        del probs
        labels = labels_from_regions(regions, m.labels, m.channels)
        del regions
        labels = restore_mask(labels, prep)
        min_voxels = int(np.ceil(min_blob_mm3 / (voxel_volume_ml(scan.spacing) * 1000.0))) if min_blob_mm3 > 0 else 0
        labels = clean_labels(labels, keep_largest=keep_largest, min_voxels=min_voxels)
        volumes = label_volumes_ml(labels, scan.spacing, m.labels)
    warnings = []
    if prep.resampled:
        warnings.append(
            "scan spacing {} mm resampled to the model's {} mm".format(
                "x".join(f"{s:.3g}" for s in prep.oriented_spacing), "x".join(f"{s:.3g}" for s in m.spacing_mm)))
    if m.placeholder:
        warnings.append("the model is a placeholder, not a trained model: its masks are not meaningful")
    return Segmentation(labels, plan, thresholds, volumes, prep, timer.seconds, backend_time[0], warnings)


@contextmanager
def _progress(plan: Plan, quiet: bool):
    if quiet:
        yield None
        return
    from tqdm import tqdm

    unit = "slice" if plan.mode is Mode.SLICES else "tile"
    with tqdm(total=plan.units, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
        yield bar.update


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


def provenance(model: LoadedModel) -> dict:
    return {"software": f"edge-infer {__version__}", "model": model.manifest.name,
            "model_version": model.manifest.version, "model_sha256": model.artifact.sha256,
            "artifact": model.artifact.file, "precision": model.artifact.precision}


@dataclass
class RunResult:
    report: dict
    outputs: dict[str, Path]
    segmentation: Segmentation


def run_case(inputs: Sequence[str | Path], out_dir: str | Path, *, model: str | Path | None = None,
             backend: str | None = None, precision: str | None = None, threads: int = 0,
             by_modality: dict[str, Path] | None = None, series_rules: dict[str, list[str]] | None = None,
             threshold: float | None = None, keep_largest: bool = False, min_blob_mm3: float = 0.0,
             batch: int | None = None, overlap: float | None = None, overlay: bool = False,
             name: str | None = None, quiet: bool = True, loaded: LoadedModel | None = None) -> RunResult:
    """Read a scan, segment it, and write mask, report (and overlay) atomically into ``out_dir``."""
    timer = Timer()
    out = Path(out_dir)
    check_output_dir(out)
    with timer.stage("load_model"):
        lm = loaded or load_model(model, backend=backend, precision=precision, threads=threads)
    with timer.stage("read"):
        scan = read_scan(inputs, lm.manifest.modalities, by_modality=by_modality, series_rules=series_rules)
    seg = segment(scan, lm, threshold=threshold, keep_largest=keep_largest, min_blob_mm3=min_blob_mm3,
                  batch=batch, overlap=overlap, quiet=quiet)
    timer.seconds.update(seg.timings)
    stem = name or case_name(scan, inputs)
    prov = provenance(lm)
    with timer.stage("write"):
        prepare_output_dir(out)
        files: dict[Path, bytes] = {}
        paths = {"mask": out / f"{stem}_mask.nii.gz", "report": out / f"{stem}_report.json"}
        files[paths["mask"]] = nifti_mask_bytes(seg.labels, scan.affine, prov, scan.reference.get("nifti"))
        if overlay:
            paths["overlay"] = out / f"{stem}_overlay.png"
            files[paths["overlay"]] = overlay_bytes(scan, seg, lm, prov)
        report = build_report(scan, lm, seg, timer.seconds, {k: p.name for k, p in paths.items()}, prov)
        files[paths["report"]] = report_bytes(report)
        commit_files(files)
    report["timings_s"]["write"] = round(timer.seconds["write"], 4)
    return RunResult(report, paths, seg)


def overlay_bytes(scan: Scan, seg: Segmentation, lm: LoadedModel, prov: dict) -> bytes:
    """PNG montage of the mask over FLAIR (or the first channel), in RAS display orientation."""
    from .prepare import apply_orientation, orientation_transform

    ch = scan.modalities.index("flair") if "flair" in scan.modalities else 0
    tf = orientation_transform(scan.affine, "RAS")
    img = apply_orientation(scan.data[ch], tf)
    lab = apply_orientation(seg.labels, tf)
    text = {"Software": prov["software"],
            "Comment": f"{prov['model']} {prov['model_version']} sha256:{prov['model_sha256']}"}
    return png_bytes(overlay_montage(np.asarray(img), np.asarray(lab)), text=text)


def build_report(scan: Scan, lm: LoadedModel, seg: Segmentation, timings: dict[str, float],
                 outputs: dict[str, str], prov: dict) -> dict:
    """The JSON report: input identity without patient data, model, plan, timings, volumes."""
    from nibabel.orientations import aff2axcodes

    total = sum(v for k, v in timings.items())
    infer = timings.get("infer", 0.0)
    return {
        "edge_infer_version": __version__,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "input": {**scan.source, "modalities": list(scan.modalities)},
        "geometry": {"shape": list(scan.shape), "spacing_mm": [round(s, 6) for s in scan.spacing],
                     "orientation": "".join(aff2axcodes(scan.affine)),
                     "affine": np.round(scan.affine, 6).tolist()},
        "model": {**lm.describe(), "manifest_name": lm.manifest.name, "intended_use": lm.manifest.intended_use},
        "provenance": prov,
        "plan": seg.plan.to_dict(),
        "thresholds": dict(zip(lm.manifest.channels, seg.thresholds)),
        "labels": {str(lb.value): lb.name for lb in lm.manifest.labels},
        "volumes_ml": seg.volumes_ml,
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
        "backend_seconds": round(seg.backend_seconds, 4),
        "overhead_fraction": round(1.0 - seg.backend_seconds / total, 4) if total > 0 else None,
        "per_unit_ms": round(1000.0 * infer / max(seg.plan.units, 1), 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "outputs": outputs,
        "warnings": seg.warnings,
    }
