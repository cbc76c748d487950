"""The runtime's data flow: read -> prepare -> plan -> infer -> finish -> write -> report.

:func:`segment` is the in-memory core (a Scan and a loaded model in, a label map on the
scan's own grid out); :func:`run_case` adds reading, writing and the report around it.
"""

from __future__ import annotations

import datetime as _dt
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from . import __version__
from .backends import installed_backends
from .engines import from_slice_major, run_windows, stream_slices
from .errors import ScanError
from .finish import clean_labels, label_volumes_ml, labels_from_regions, regions_from_logits, voxel_volume_ml
from .memory import current_rss_bytes, peak_rss_mb
from .model import LoadedModel, load_model
from .plan import BackendCosts, Geometry, Mode, Plan, choose_artifact, make_plan, unit_shape
from .prepare import (Prepared, SliceSource, crop, needs_resampling, orientation_transform, pad, pad_widths,
                      prepare, reoriented_affine, resampled_shape, restore_mask)
from .safety import check_stem, output_stem
from .sanity import checked_scan
from .scan import Scan, read_scan
from .writers import check_output_dir, commit_files, nifti_mask_bytes, overlay_montage, png_bytes, prepare_output_dir, report_bytes


def measure_costs(model: LoadedModel, unit: tuple[int, ...], baseline: int) -> BackendCosts:
    """Measure what the backend adds to resident memory: a run of one unit, then of two.

    The first run sets up the backend's arena and workspace (``backend_base_bytes``); the
    growth from one to two units is the cost of each unit in a batch.
    """
    x = np.zeros(unit, dtype=np.float32)
    r0 = current_rss_bytes()
    model.backend.run(x)
    r1 = current_rss_bytes()
    model.backend.run(np.concatenate([x, x]))
    r2 = current_rss_bytes()
    per_unit = max(r2 - r1, 0)
    return BackendCosts(baseline_bytes=baseline, backend_base_bytes=max(r1 - r0, 0), per_unit_bytes=per_unit)


def geometry_for(m, scan: Scan, fixed: bool = True) -> Geometry:
    """The sizes a run of ``m`` over ``scan`` will hold, computed before any of them exists
    (``fixed``: the artifact's 2D plane is fixed to the tile, see :func:`padding_for`)."""
    from .scan import voxel_spacing

    tf = orientation_transform(scan.affine, m.orientation)
    o_shape = tuple(int(scan.shape[int(np.flatnonzero(tf[:, 0] == ax)[0])]) for ax in range(3))
    o_spacing = voxel_spacing(reoriented_affine(scan.affine, tf, scan.shape))
    resampled = needs_resampling(o_spacing, m.spacing_mm)
    p_shape = resampled_shape(o_shape, o_spacing, m.spacing_mm) if resampled else o_shape
    widths = padding_for(m, p_shape, fixed)
    padded = tuple(n + a + b for n, (a, b) in zip(p_shape, widths))
    return Geometry(len(m.modalities), len(m.channels), scan.shape, tuple(p_shape), padded, resampled, dims=m.dims)


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


def fixed_plane(lm: LoadedModel) -> bool:
    """Whether the loaded 2D artifact takes only its manifest's tile in-plane (a TFLite graph
    exported at a fixed size); False when its spatial dimensions are dynamic (ONNX)."""
    shape = lm.backend.input.shape
    spatial = shape[2:] if lm.manifest.layout.startswith("NC") else shape[1:-1]
    return all(isinstance(d, int) for d in spatial)


def padding_for(m, shape: tuple[int, int, int], fixed: bool = True) -> list[tuple[int, int]]:
    """Padding a prepared volume needs for the model: tile minimum and ``divisible_by``.

    2D: planes smaller than the tile are padded up to it; a larger plane is refused when the
    artifact is ``fixed`` to the tile, else padded to a multiple of ``divisible_by``.
    """
    if m.dims == 2:
        plane = [ax for ax in range(3) if ax != m.slice_axis]
        minimum, multiple = [1, 1, 1], [1, 1, 1]
        for ax, t in zip(plane, m.tile or (1, 1)):
            minimum[ax] = t
            multiple[ax] = m.divisible_by
        if m.tile is not None and fixed:
            for ax, t in zip(plane, m.tile):
                if shape[ax] > t:
                    raise ScanError(
                        f"the prepared scan is {shape[ax]} voxels along axis {ax} but this artifact of the model "
                        f"takes fixed {t}-voxel slices; use its ONNX artifact (--backend onnx), whose size is "
                        "dynamic, or crop the scan"
                    )
        return pad_widths(shape, tuple(minimum), tuple(multiple))
    return pad_widths(shape, tuple(m.tile), (m.divisible_by,) * 3)


def check_enough_slices(m, prepared_shape: Sequence[int]) -> None:
    """A 3D model needs a volume at least half its tile thick along every axis."""
    if m.dims == 3:
        for ax, (n, t) in enumerate(zip(prepared_shape, m.tile)):
            if n * 2 < t:
                raise ScanError(
                    f"the scan has only {n} voxels along axis {ax} at the model's spacing; the 3D model "
                    f"needs at least {(t + 1) // 2} (its tile is {t}); use a 2D model for thin stacks"
                )


def segment(scan: Scan, model: LoadedModel, *, threshold: float | None = None, keep_largest: bool = False,
            min_blob_mm3: float = 0.0, batch: int | None = None, overlap: float | None = None,
            quiet: bool = True, plan: Plan | None = None, release_input: bool = False) -> Segmentation:
    """Segment ``scan`` with ``model``; the labels lie on the scan's own grid.

    ``plan`` (from :func:`plan_run`) fixes batch and overlap; without one a default plan is made.
    2D models run on slices prepared batch by batch straight from the scan (no prepared copy,
    when no resampling is needed) and their logits become labels batch by batch (no logits
    volume). ``release_input`` hands the scan's voxel array over to this function: it is
    dropped from the scan (:meth:`Scan.release_voxels`) once nothing reads it any more, and a
    3D run reuses its memory for the logits. For callers that made the scan themselves and
    need only its geometry afterwards.
    """
    original = scan
    m = model.manifest
    timer = Timer()
    scan = scan.select(m.modalities)
    scan, warnings = checked_scan(scan)  # refuses a channel with no image; warns about non-MR intensities
    fixed = fixed_plane(model)
    if plan is None:
        g = geometry_for(m, scan, fixed)
        check_enough_slices(m, g.prepared_shape)
        plan = make_plan(m, g, backend=model.artifact.backend,
                         precision=model.artifact.precision, threads=model.backend.threads,
                         batch=batch, overlap=overlap)
    slices = plan.mode is Mode.SLICES
    with timer.stage("prepare"):
        prep = prepare(scan.data, scan.affine, m.orientation, m.spacing_mm, m.normalization,
                       slice_axis=m.slice_axis if slices else None, moments=scan.moments, lazy=slices)
        widths = padding_for(m, prep.grid_shape, fixed)
        if slices:  # [S, C, H, W]: pad the plane only
            widths = [w for ax, w in enumerate(widths) if ax != m.slice_axis]
        volume = prep.data.padded(widths) if isinstance(prep.data, SliceSource) else pad(prep.data, widths)
        lazy = isinstance(volume, SliceSource)
        prep = replace(prep, data=None)  # the padded volume (or the lazy source) is the only copy kept
        spare = None
        if release_input and not lazy:  # a lazy source reads the scan until the last batch
            spare = owned_buffer(scan.data)
            scan.release_voxels()
            original.release_voxels()
    busy = BusyClock()
    backends = model.runners(plan.workers) if slices else [model.backend]
    runs = [busy.timed(b.run) for b in backends]

    channels_last = not m.layout.startswith("NC")
    k = len(m.channels)
    thresholds = m.thresholds(threshold)
    with timer.stage("infer"), _progress(plan, quiet) as bar:
        if slices:  # labels made batch by batch: no logits volume is ever held
            (h0, h1), (w0, w1) = widths
            h, w = volume.shape[2] - h0 - h1, volume.shape[3] - w0 - w1
            # each plane stored transposed: the [I, J, K] view of a 2D run along K is then in
            # NIfTI's own (Fortran) voxel order, and the writer copies it straight
            labels = np.empty((volume.shape[0], w, h), dtype=np.uint8).transpose(0, 2, 1)

            def to_labels(s: int, e: int, y: np.ndarray) -> None:
                regions = regions_from_logits(np.moveaxis(y[:, :, h0:h0 + h, w0:w0 + w], 1, 0), thresholds,
                                              m.activation)
                labels[s:e] = labels_from_regions(regions, m.labels, m.channels)

            stream_slices(volume, runs, to_labels, batch=plan.batch, channels_last=channels_last, progress=bar)
        else:
            logits = float32_array((k, *volume.shape[1:]), spare)
            run_windows(volume, runs[0], logits, tile=plan.tile, overlap=plan.overlap, batch=plan.batch,
                        channels_last=channels_last, progress=bar)
    del volume, spare
    if release_input and lazy:
        scan.release_voxels()
        original.release_voxels()
    with timer.stage("finish"):
        if slices:
            labels = from_slice_major(labels, m.slice_axis)
        else:
            regions = regions_from_logits(crop(logits, widths), thresholds, m.activation)
            del logits
            labels = labels_from_regions(regions, m.labels, m.channels)
            del regions
        labels = restore_mask(labels, prep)
        min_voxels = int(np.ceil(min_blob_mm3 / (voxel_volume_ml(scan.spacing) * 1000.0))) if min_blob_mm3 > 0 else 0
        labels = clean_labels(labels, keep_largest=keep_largest, min_voxels=min_voxels)
        volumes = label_volumes_ml(labels, scan.spacing, m.labels)
    if prep.resampled:
        warnings.append(
            "scan spacing {} mm resampled to the model's {} mm".format(
                "x".join(f"{s:.3g}" for s in prep.oriented_spacing), "x".join(f"{s:.3g}" for s in m.spacing_mm)))
    if m.placeholder:
        warnings.append("the model is a placeholder, not a trained model: its masks are not meaningful")
    return Segmentation(labels, plan, thresholds, volumes, prep, timer.seconds, busy.seconds, warnings)


class BusyClock:
    """Wall time during which at least one backend call is running (calls may overlap when
    several workers run at once: their union is counted, never their sum)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._active = 0
        self._since = 0.0
        self._lock = threading.Lock()

    def timed(self, fn):
        def call(x):
            with self._lock:
                if self._active == 0:
                    self._since = time.perf_counter()
                self._active += 1
            try:
                return fn(x)
            finally:
                with self._lock:
                    self._active -= 1
                    if self._active == 0:
                        self.seconds += time.perf_counter() - self._since
        return call


def owned_buffer(data: np.ndarray) -> np.ndarray | None:
    """The flat, writable float32 memory behind ``data`` when it owns it outright (the array
    a reader allocated), else None (a view into something else, a read-only placeholder)."""
    arr = data
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    if arr.flags.owndata and arr.flags.c_contiguous and arr.flags.writeable and arr.dtype == np.float32:
        return arr.reshape(-1)
    return None


def float32_array(shape: tuple[int, ...], spare: np.ndarray | None) -> np.ndarray:
    """An uninitialised float32 array of ``shape``: carved from ``spare`` when it is big enough."""
    n = int(np.prod(shape))
    if spare is not None and spare.size >= n:
        return spare[:n].reshape(shape)
    return np.empty(shape, dtype=np.float32)


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


def plan_run(scan: Scan, lm: LoadedModel, *, board=None, batch: int | None = None,
             overlap: float | None = None, baseline: int = 0, scan_held: bool = True, workers: int = 1) -> Plan:
    """Check the scan against the model and plan the run (with a board: to its memory budget).

    ``scan_held=False``: the run frees the scan's voxels once prepared (``segment(release_input=True)``).
    """
    m = lm.manifest
    scan = scan.select(m.modalities)
    g = replace(geometry_for(m, scan, fixed_plane(lm)), scan_held=scan_held)
    check_enough_slices(m, g.prepared_shape)
    costs = measure_costs(lm, unit_shape(m, g.padded_shape), baseline) if board is not None else None
    return make_plan(m, g, backend=lm.artifact.backend, precision=lm.artifact.precision,
                     threads=lm.backend.threads, batch=batch, overlap=overlap, board=board, costs=costs,
                     workers=workers)


def load_for_run(model: str | Path | None, board=None, backend: str | None = None,
                 precision: str | None = None, threads: int = 0, workers: int | None = None
                 ) -> tuple[LoadedModel, int]:
    """Load a model for a run: backend, precision and threads from the board where not given,
    and how many backend calls the run keeps in flight (:func:`~edge_infer.plan.default_workers`).

    ``threads`` are the CPU threads of the whole run: each of the ``workers`` concurrent calls
    gets ``threads // workers`` of them.
    """
    from .manifest import load_manifest
    from .model import resolve_model
    from .plan import GPU_PROVIDERS, default_workers

    m = load_manifest(resolve_model(model))
    opts: dict = {}
    if board is not None:
        backend, precision = choose_artifact(m, board, backend, precision, installed_backends())
        if backend == "onnx" and board.providers:
            opts["providers"] = list(board.providers)
    total = threads or (min(board.threads, os.cpu_count() or 1) if board is not None else (os.cpu_count() or 1))
    w = workers or default_workers(m.dims, total, board, backend or "onnx")
    lm = load_model(model, backend=backend, precision=precision, threads=max(1, total // w), **opts)
    on_gpu = any(p in GPU_PROVIDERS for p in lm.describe().get("providers", [])[:1])
    return lm, (1 if on_gpu and not workers else w)


def budget_breaches(board, report: dict) -> list[str]:
    """Budget checks of a finished run: peak RSS, latency per slice/tile, latency per volume."""
    out = []
    if report["peak_rss_mb"] > board.memory_budget_mb:
        out.append(f"peak RSS {report['peak_rss_mb']:.0f} MB is over {board.name}'s memory budget "
                   f"{board.memory_budget_mb:.0f} MB")
    unit = "slice" if report["plan"]["mode"] == "slices" else "tile"
    if report["per_unit_ms"] > board.latency_per_unit_ms:
        out.append(f"{report['per_unit_ms']:.0f} ms per {unit} is over {board.name}'s budget of "
                   f"{board.latency_per_unit_ms:.0f} ms")
    total = sum(report["timings_s"].values())
    if total > board.latency_per_volume_s:
        out.append(f"{total:.1f} s per volume is over {board.name}'s budget of {board.latency_per_volume_s:.0f} s")
    return out


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
             name: str | None = None, quiet: bool = True, loaded: LoadedModel | None = None,
             board=None, strict: bool = False, out_format: str = "nifti", workers: int | None = None) -> RunResult:
    """Read a scan, segment it, and write mask, report (and overlay) atomically into ``out_dir``.

    With a ``board`` profile the run is planned to its memory budget (refused with
    :class:`BudgetError` before any working buffer exists if it cannot fit) and checked
    against its latency budgets afterwards: a breach is a warning, or with ``strict`` an
    error that writes nothing. ``threads`` are the run's CPU threads in all; ``workers``
    backend calls run at once on different slices (default: one per thread for 2D models on
    a CPU; a preloaded model runs one call at a time unless told).
    """
    from .errors import BudgetError, OutputError

    timer = Timer()
    out = Path(out_dir)
    check_output_dir(out)
    if name is not None:
        check_stem(name)  # refuse `--name ../x` before any work
    with timer.stage("load_model"):
        if loaded is not None:
            lm, workers = loaded, workers or 1
        else:
            lm, workers = load_for_run(model, board, backend, precision, threads, workers)
    baseline = current_rss_bytes()
    with timer.stage("read"):
        scan = read_scan(inputs, lm.manifest.modalities, by_modality=by_modality, series_rules=series_rules)
    if out_format in ("seg", "both") and scan.source.get("format") != "dicom":
        from .seg import NOT_DICOM

        raise OutputError(NOT_DICOM)
    # only the overlay needs the scan's voxels after preparation: without one they are freed
    plan = plan_run(scan, lm, board=board, batch=batch, overlap=overlap, baseline=baseline, scan_held=overlay,
                    workers=workers)
    seg = segment(scan, lm, threshold=threshold, keep_largest=keep_largest, min_blob_mm3=min_blob_mm3,
                  quiet=quiet, plan=plan, release_input=not overlay)
    timer.seconds.update(seg.timings)
    stem = output_stem(name, case_name(scan, inputs))
    prov = provenance(lm)
    with timer.stage("write"):
        files: dict[Path, bytes] = {}
        paths: dict[str, Path] = {}
        if out_format in ("nifti", "both"):
            paths["mask"] = out / f"{stem}_mask.nii.gz"
            files[paths["mask"]] = nifti_mask_bytes(seg.labels, scan.affine, prov, scan.reference.get("nifti"))
        if out_format in ("seg", "both"):
            from .seg import seg_bytes

            paths["seg"] = out / f"{stem}_seg.dcm"
            files[paths["seg"]] = seg_bytes(scan, seg.labels, lm.manifest, prov)
        paths["report"] = out / f"{stem}_report.json"
        if overlay:
            paths["overlay"] = out / f"{stem}_overlay.png"
            files[paths["overlay"]] = overlay_bytes(scan, seg, lm, prov)
        report = build_report(scan, lm, seg, timer.seconds, {k: p.name for k, p in paths.items()}, prov)
        if board is not None:
            breaches = budget_breaches(board, report)
            report["budget"] = {"board": board.to_dict(), "breaches": breaches, "ok": not breaches,
                                "measured_on": _machine(), "estimated_peak_mb": plan.estimated_peak_mb,
                                "measured_peak_mb": report["peak_rss_mb"]}
            if breaches and strict:
                raise BudgetError("; ".join(breaches) + " (--strict: nothing written)")
            report["warnings"].extend(f"budget: {b}" for b in breaches)
        files[paths["report"]] = report_bytes(report)
        prepare_output_dir(out)
        commit_files(files, folder=out)
    report["timings_s"]["write"] = round(timer.seconds["write"], 4)
    return RunResult(report, paths, seg)


def _machine() -> str:
    import platform

    return f"{platform.machine()} {platform.system()} ({os.cpu_count()} cpus)"


def overlay_bytes(scan: Scan, seg: Segmentation, lm: LoadedModel, prov: dict) -> bytes:
    """PNG montage of the mask over FLAIR (or the first channel), in RAS display orientation."""
    from .prepare import apply_orientation, orientation_transform

    if scan.released:
        raise RuntimeError("overlay_bytes needs the scan's voxels; segment() was told to release them")
    ch = scan.modalities.index("flair") if "flair" in scan.modalities else 0
    tf = orientation_transform(scan.affine, "RAS")
    img = apply_orientation(scan.data[ch], tf)
    lab = apply_orientation(seg.labels, tf)
    text = {"Software": prov["software"],
            "Comment": f"{prov['model']} {prov['model_version']} sha256:{prov['model_sha256']}"}
    names = {int(lb.value): lb.name for lb in lm.manifest.labels}
    return png_bytes(overlay_montage(np.asarray(img), np.asarray(lab), label_names=names, transform=tf), text=text)


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
        "warnings": [*scan.source.get("warnings", []), *seg.warnings],
    }
