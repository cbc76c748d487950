"""The in-memory core of a run: a Scan and a loaded model in, a label map on the scan's grid out.

:func:`segment` goes prepare -> infer -> finish; reading and writing are the caller's
(:func:`edge_infer.run.run_case`, the DICOM node, a script).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from .crop import box_slices, place_in_full
from .cropping import CropSummary, box_moments
from .engines import Windows, from_slice_major, run_windows, stream_slices
from .finish import clean_labels, label_volumes_ml, labels_from_regions, regions_from_logits, voxel_volume_ml
from .model import LoadedModel
from .options import FinishOptions, RunTuning
from .plan import Mode, Plan, fixed_plane, padding_for
from .planning import plan_run
from .prepare import (
    Prepared,
    SliceSource,
    channel_scales,
    clipped_zscore,
    crop,
    normalises_first,
    normalized_copy,
    pad,
    prepare,
    restore_mask,
)
from .sanity import checked_scan
from .scan import Scan
from .skip import background_values
from .timing import BusyClock, Timer
from .units import Where, crop_plane, units_to_run


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
    crop: CropSummary | None = None    # issue 15: the box, units skipped, compute saved (None: full view)


def segment(scan: Scan, model: LoadedModel, finish: FinishOptions = FinishOptions(), *,
            tuning: RunTuning = RunTuning(), plan: Plan | None = None, release_input: bool = False) -> Segmentation:
    """Segment ``scan`` with ``model``; the labels lie on the scan's own grid.

    ``plan`` (from :func:`edge_infer.planning.plan_run`) fixes batch, overlap and the crop box;
    without one a default plan is made from ``tuning``. 2D models run on slices prepared batch
    by batch straight from the scan (no prepared copy, when no resampling is needed) and their
    logits become labels batch by batch (no logits volume). With a crop box (the manifest's
    crop rule, unless ``tuning.crop`` is off) only the box is computed, empty slices and
    windows reuse the model's own output for an all-background unit, and the mask is
    background outside the box. ``release_input`` hands the scan's voxel array over to this
    function: it is dropped from the scan (:meth:`Scan.release_voxels`) once nothing reads it
    any more, and a 3D run reuses its memory for the logits. For callers that made the scan
    themselves and need only its geometry afterwards.
    """
    original, m, timer = scan, model.manifest, Timer()
    scan = scan.select(m.modalities)
    scan, checks = checked_scan(scan)  # refuses a channel with no image; warns about non-MR intensities
    plan = plan or plan_run(scan, model, tuning=tuning)
    with timer.stage("prepare"):
        prep, volume, where = _prepare_volume(scan, model, plan)
        lazy = isinstance(volume, SliceSource)
        spare = None
        if release_input and not lazy:  # a lazy source reads the scan until the last batch
            spare = owned_buffer(scan.data)
            scan.release_voxels()
            original.release_voxels()
    busy = BusyClock()
    backends = model.runners(plan.workers) if plan.mode is Mode.SLICES else [model.backend]
    runs = [busy.timed(b.run) for b in backends]
    thresholds = m.thresholds(finish.threshold)
    with timer.stage("infer"), progress_bar(plan, tuning) as bar:
        out = _infer(volume, m, plan, where, thresholds, runs, spare, bar)
    del volume, spare
    if release_input and lazy:
        scan.release_voxels()
        original.release_voxels()
    with timer.stage("finish"):
        labels = _finish(out, model, plan, where, thresholds, prep, scan, finish)
        volumes = label_volumes_ml(labels, scan.spacing, m.labels)
    return Segmentation(labels, plan, thresholds, volumes, prep, timer.seconds, busy.seconds,
                        [*checks, *_warnings(prep, m)], crop=where.summary(m, plan))


def _prepare_volume(scan: Scan, model: LoadedModel, plan: Plan):
    """Prepare and pad the scan: (Prepared without data, the padded volume or lazy source, where to compute)."""
    m = model.manifest
    slices = plan.mode is Mode.SLICES
    data, norm, moments, background = _normalised_first(scan, m)
    prep = prepare(data, scan.affine, m.orientation, m.spacing_mm, norm,
                   slice_axis=m.slice_axis if slices else None, moments=moments, lazy=slices)
    widths = padding_for(m, prep.grid_shape, fixed_plane(model))
    where = units_to_run(scan, m, plan, prep, widths, background)
    if slices:  # [S, C, H, W]: pad the plane only
        widths = [w for ax, w in enumerate(widths) if ax != m.slice_axis]
    volume: np.ndarray | SliceSource
    if isinstance(prep.data, SliceSource):
        volume = prep.data.padded(widths)
    elif prep.data is not None:
        volume = pad(prep.data, widths)
    else:
        raise ValueError("prepare() returned no volume to pad")
    return replace(prep, data=None), volume, where  # the padded volume (or lazy source) is the only copy kept


def _normalised_first(scan: Scan, m):
    """``(data, normalization left to prepare, moments, background)``: the scan normalised
    voxel by voxel before :func:`prepare` where the model's statistics are not the whole scan's,
    as nnU-Net normalises (then resamples): fixed statistics (``clipped_zscore``), or ``zscore``
    over the crop box when the model crops to nonzero. ``background``: the normalised value of
    a zero voxel per channel in that case (prepare's normalisation gives it otherwise)."""
    if not normalises_first(m):
        return scan.data, m.normalization, scan.moments, None
    if m.normalization == "clipped_zscore":
        zero = np.zeros((len(m.intensity), 1, 1, 1), np.float32)
        return clipped_zscore(scan.data, m.intensity), "none", None, clipped_zscore(zero, m.intensity).ravel()
    moments = box_moments(m, scan)                       # zscore over the crop box
    background = background_values(channel_scales(scan.data, "zscore", moments))
    return normalized_copy(scan.data, "zscore", moments=moments), "none", None, background


def _infer(volume, m, plan: Plan, where: Where, thresholds, runs: list, spare: np.ndarray | None, bar) -> np.ndarray:
    """Run the engine: slice-major labels for 2D models, a logits volume (of the box) for 3D models."""
    channels_last = not m.layout.startswith("NC")
    if plan.mode is not Mode.SLICES:
        inside = volume[(slice(None),) + box_slices(where.box)] if where.box is not None else volume
        logits = float32_array((len(m.channels), *inside.shape[1:]), spare)
        windows = Windows(tuple(plan.window_tile), plan.overlap, plan.batch, m.blending, m.windows)
        run_windows(inside, runs[0], logits, windows, channels_last=channels_last, progress=bar, skip=where.skip)
        return logits
    (h0, h1), (w0, w1) = [w for ax, w in enumerate(where.widths) if ax != m.slice_axis]
    h, w = volume.shape[2] - h0 - h1, volume.shape[3] - w0 - w1
    plane = where.plane_box(m.slice_axis, volume.shape[2:])
    src = crop_plane(volume, plane)
    (a, b), (c, d) = plane
    rows, cols = (max(a, h0), min(b, h0 + h)), (max(c, w0), min(d, w0 + w))
    # each plane stored transposed: the [I, J, K] view of a 2D run along K is then in
    # NIfTI's own (Fortran) voxel order, and the writer copies it straight; outside the box: background
    alloc = np.zeros if where.box is not None else np.empty
    labels = alloc((volume.shape[0], w, h), dtype=np.uint8).transpose(0, 2, 1)

    def to_labels(s: int, e: int, y: np.ndarray) -> None:  # labels made batch by batch: no logits volume
        y = y[:, :, rows[0] - a:rows[1] - a, cols[0] - c:cols[1] - c]
        regions = regions_from_logits(np.moveaxis(y, 1, 0), thresholds, m.activation)
        rs, cs = slice(rows[0] - h0, rows[1] - h0), slice(cols[0] - w0, cols[1] - w0)
        labels[s:e, rs, cs] = labels_from_regions(regions, m.labels, m.channels)

    stream_slices(src, runs, to_labels, batch=plan.batch, channels_last=channels_last, progress=bar, skip=where.skip)
    return labels


def _finish(out: np.ndarray, model: LoadedModel, plan: Plan, where: Where, thresholds, prep: Prepared, scan: Scan,
            finish: FinishOptions) -> np.ndarray:
    """Labels back on the scan's grid, cleaned as ``finish`` asks."""
    m = model.manifest
    if plan.mode is Mode.SLICES:
        labels = from_slice_major(out, m.slice_axis)
    else:
        regions = regions_from_logits(out, thresholds, m.activation)
        del out
        labels = labels_from_regions(regions, m.labels, m.channels)
        del regions
        if where.box is not None:   # the box back on the padded grid, background around it
            labels = place_in_full(labels, where.box, where.padded_shape)
        labels = crop(labels, where.widths)
    labels = restore_mask(labels, prep)
    mm3 = finish.min_blob_mm3
    min_voxels = int(np.ceil(mm3 / (voxel_volume_ml(scan.spacing) * 1000.0))) if mm3 > 0 else 0
    return clean_labels(labels, keep_largest=finish.keep_largest, min_voxels=min_voxels)


def _warnings(prep: Prepared, m) -> list[str]:
    out = []
    if prep.resampled:
        out.append("scan spacing {} mm resampled to the model's {} mm".format(
            "x".join(f"{s:.3g}" for s in prep.oriented_spacing), "x".join(f"{s:.3g}" for s in m.spacing_mm)))
    if m.placeholder:
        out.append("the model is a placeholder, not a trained model: its masks are not meaningful")
    return out


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


def show_progress(tuning: RunTuning, stream=None) -> bool:
    """Whether to draw a progress bar: as ``tuning.progress`` forces, else only when not quiet
    and stderr is a terminal (never into a log file or a pipe)."""
    if tuning.progress is not None:
        return tuning.progress
    stream = stream if stream is not None else sys.stderr
    return not tuning.quiet and bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def progress_bar(plan: Plan, tuning: RunTuning) -> Iterator[Callable[[int], object] | None]:
    """A tqdm bar's ``update`` over the run's slices or tiles, or None when none is shown."""
    if not show_progress(tuning):
        yield None
        return
    from tqdm import tqdm

    unit = "slice" if plan.mode is Mode.SLICES else "tile"
    with tqdm(total=plan.units, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
        yield bar.update
