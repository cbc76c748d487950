"""The plan of a run: mode, backend, precision, threads, batch, tile, and a memory estimate.

Everything here is pure: manifest facts, sizes, a board profile and measured backend costs
in, a :class:`Plan` out. :func:`make_plan` picks the largest batch whose estimated peak
memory fits the board's budget and refuses (:class:`~edge_infer.errors.BudgetError`, exit 3)
before any working buffer is allocated when even one slice or tile does not fit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum

import numpy as np

from .board_backends import check_board_backend
from .errors import BudgetError, ModelError, ScanError
from .manifest import Manifest
from .prepare import (
    needs_resampling,
    normalises_first,
    orientation_transform,
    pad_widths,
    reoriented_affine,
    resampled_shape,
)
from .triples import int_triple
from .vocab import BACKENDS, BackendName

MB = 1024 * 1024


class Mode(str, Enum):
    SLICES = "slices"
    WINDOWS = "windows"


#: most slices per backend call for 2D models, and the default tiles per call for 3D models
DEFAULT_SLICE_BATCH = 8
DEFAULT_TILE_BATCH = 1
#: voxels per plane a CPU backend call needs to keep its threads busy: about two 240x240
#: slices. Beyond that a larger batch costs memory and gains nothing on a CPU (measured with
#: the default model on 240x240x155: batch 2 against 8, same backend time, 160 MB less peak
#: RSS; docs/performance.md). GPU execution providers gain from more and keep max_batch.
CPU_CALL_VOXELS = 2 * 240 * 240
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def cpu_slice_batch(unit_voxels: int, cap: int = DEFAULT_SLICE_BATCH) -> int:
    """Slices per call that keep a CPU backend busy: enough for :data:`CPU_CALL_VOXELS`, at most ``cap``."""
    return max(1, min(int(cap), -(-CPU_CALL_VOXELS // max(int(unit_voxels), 1))))


def gpu_board(board, backend: str) -> bool:
    """Whether ``backend`` runs on the board's GPU (onnxruntime with a CUDA/TensorRT provider)."""
    return board is not None and backend == BackendName.ONNX and any(p in GPU_PROVIDERS for p in board.providers)


def default_workers(dims: int, threads: int, board=None, backend: str = BackendName.ONNX.value) -> int:
    """Backend calls in flight at once for a run with ``threads`` CPU threads in all.

    2D on a CPU: one single-threaded call per thread, on different slices. Measured on the
    2-core machine with the default model (``python -m bench runtime``'s sweep, quiet, two runs):
    4.03-4.22 s against 4.35-4.39 s per 240x240x155 volume with onnxruntime, 5.36-5.43 s against
    5.53-5.77 s with LiteRT;
    while other jobs loaded the machine, two 1-thread calls ran 1.45x the slices per second of
    one 2-thread call (intra-op threads wait on each other). 3D windows overlap, and a GPU
    serialises its calls: one call, all threads.
    """
    if dims != 2 or gpu_board(board, backend):
        return 1
    return max(1, int(threads))


def default_batch(mode: Mode, unit_voxels: int, board=None, backend: str = BackendName.ONNX.value) -> int:
    """Batch when none is asked for: tiles one at a time; slices enough to keep a CPU busy,
    up to the board's ``max_batch`` on a board whose onnxruntime runs on its GPU."""
    if mode is not Mode.SLICES:
        return DEFAULT_TILE_BATCH
    if board is None:
        return cpu_slice_batch(unit_voxels)
    if gpu_board(board, backend):
        return int(board.max_batch)
    return cpu_slice_batch(unit_voxels, board.max_batch)
DEFAULT_OVERLAP = 0.5


@dataclass(frozen=True)
class Geometry:
    """Sizes of the volumes a run holds: the scan, the prepared grid and the padded grid."""

    channels: int
    outputs: int
    scan_shape: tuple[int, int, int]
    prepared_shape: tuple[int, int, int]
    padded_shape: tuple[int, int, int]
    resampled: bool
    scan_held: bool = True         # False: the scan's voxels are freed once nothing reads them
    dims: int = 3                  # 2: slices prepared lazily (unless resampled), labels streamed
    run_shape: tuple[int, int, int] | None = None   # issue 15: the crop box the engine runs (None: padded)
    normalised_copy: bool = False  # the scan is normalised into a copy before prepare (prepare.normalises_first)

    @property
    def engine_shape(self) -> tuple[int, int, int]:
        """The grid the engine runs over: the crop box, else the whole padded grid."""
        return self.run_shape if self.run_shape is not None else self.padded_shape


@dataclass(frozen=True)
class BackendCosts:
    """Memory of the process and the backend, measured or assumed.

    ``baseline_bytes``: the process with runtime and model loaded, before the scan is read.
    ``backend_base_bytes``: what the backend adds on its first run (arena, workspace).
    ``per_unit_bytes``: what each extra slice or tile in a batch adds.
    """

    baseline_bytes: int
    backend_base_bytes: int
    per_unit_bytes: int
    measured: bool = True


@dataclass(frozen=True)
class Plan:
    mode: Mode
    backend: str
    precision: str
    threads: int
    batch: int
    tile: tuple[int, ...] | None
    overlap: float
    slice_axis: int
    padded_shape: tuple[int, int, int]
    units: int                     # slices or tiles the engine will run
    workers: int = 1               # backend calls in flight at once (2D on a CPU)
    board: str | None = None
    memory_budget_mb: float | None = None
    estimated_peak_mb: float | None = None
    estimate_mb: dict[str, float] = field(default_factory=dict)
    crop_box: tuple[tuple[int, int], ...] | None = None   # issue 15: on the padded grid; None: full view

    @property
    def window_tile(self) -> tuple[int, ...]:
        """The tile of a plan of windows (a plan of slices has none)."""
        if self.tile is None:
            raise ValueError(f"a plan of {self.mode.value} has no window tile")
        return self.tile

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mode"] = self.mode.value
        return d


def count_units(mode: Mode, padded_shape: Sequence[int], tile: Sequence[int] | None,
                overlap: float, slice_axis: int, rule: str = "nnunet") -> int:
    """Number of slices (2D) or windows (3D) the engine will run (``rule``: whose window placement)."""
    if mode is Mode.SLICES:
        return int(padded_shape[slice_axis])
    from .engines import window_starts

    n = 1
    for size, t in zip(padded_shape, tile or (), strict=False):
        n *= len(window_starts(size, t, overlap, rule))
    return n


def model_tile(m: Manifest) -> tuple[int, ...]:
    """The sliding-window tile of a 3D model (validated manifests of 3D models always have one)."""
    if m.tile is None:
        raise ModelError(f"model {m.name!r} is 3D but has no tile; set input.tile (the patch size) in its manifest")
    return m.tile


def unit_shape(m: Manifest, padded_shape: Sequence[int]) -> tuple[int, ...]:
    """Input shape of one slice or tile, batch 1, in the model's layout."""
    if m.dims == 2:
        spatial = [padded_shape[a] for a in range(3) if a != m.slice_axis]
    else:
        spatial = list(model_tile(m))
    c = len(m.modalities)
    return (1, c, *spatial) if m.layout.startswith("NC") else (1, *spatial, c)


def _prod(shape: Sequence[int]) -> int:
    return int(math.prod(int(s) for s in shape))


def estimate_memory(g: Geometry, batch: int, costs: BackendCosts, unit_voxels: int,
                    workers: int = 1) -> dict[str, int]:
    """Estimated peak resident bytes of each stage, and ``peak`` (their maximum).

    The scan (float32, ``channels`` volumes) is held from reading to writing, or only while
    something reads it when ``g.scan_held`` is false. 3D: preparation holds the prepared copy
    (plus two temporaries of it while resampling); inference holds the padded volume, the
    logits and the backend with ``batch`` units in flight; finishing holds the logits, region
    masks (bool) and two label maps (uint8). 2D: slices are prepared batch by batch from the
    scan itself (a prepared copy only when resampling) and turned into uint8 labels batch by
    batch, so no logits volume exists. ``workers`` concurrent calls each hold a batch and the
    backend's working memory.
    """
    f32 = 4
    scan = g.channels * _prod(g.scan_shape) * f32
    held = scan if g.scan_held else 0
    prepared = g.channels * _prod(g.prepared_shape) * f32
    padded = g.channels * _prod(g.padded_shape) * f32
    probs = g.outputs * _prod(g.engine_shape) * f32    # logits of the crop box only
    io_batch = workers * batch * unit_voxels * (g.channels + 2 * g.outputs) * f32
    backend = workers * (costs.backend_base_bytes + batch * costs.per_unit_bytes)
    labels = _prod(g.prepared_shape) + 2 * _prod(g.scan_shape)
    copy = scan if g.normalised_copy else 0              # held while prepare (and a lazy 2D source) reads it
    if g.dims == 2 and not g.resampled:
        stages = {"prepare": scan + copy, "infer": scan + copy + backend + io_batch + labels, "finish": held + labels}
    elif g.dims == 2:
        stages = {"prepare": scan + copy + prepared * 3 + (padded if padded != prepared else 0),
                  "infer": held + padded + backend + io_batch + labels, "finish": held + labels}
    else:
        stages = {
            "prepare": scan + copy + prepared * (3 if g.resampled else 1) + (padded if padded != prepared else 0),
            "infer": held + padded + probs + backend + io_batch,
            "finish": held + probs + g.outputs * _prod(g.prepared_shape) + labels,
        }
    out = {k: costs.baseline_bytes + v for k, v in stages.items()}
    out["peak"] = max(out.values())
    return out


@dataclass(frozen=True)
class Execution:
    """How the backend runs: which artifact (backend, precision), its threads per call, and how
    many calls are in flight at once (``workers``, 2D models)."""

    backend: str
    precision: str
    threads: int = 1
    workers: int = 1


def make_plan(m: Manifest, g: Geometry, execution: Execution, *, batch: int | None = None,
              overlap: float | None = None, board=None, costs: BackendCosts | None = None) -> Plan:
    """The plan for running ``m``'s model over a volume of geometry ``g``.

    Without ``batch``, the batch is :func:`default_batch`. With a board (and costs), it is the
    largest up to that (or up to ``batch``) whose estimate fits the board's memory budget.
    """
    backend, precision, threads, workers = execution.backend, execution.precision, execution.threads, execution.workers
    mode = Mode.SLICES if m.dims == 2 else Mode.WINDOWS
    ov = (1.0 - m.step) if overlap is None else float(overlap)   # the manifest's step (schema 2)
    tile = m.tile if mode is Mode.WINDOWS else None
    units = count_units(mode, g.engine_shape, tile, ov, m.slice_axis, m.windows)
    uvox = _prod(unit_shape(m, g.engine_shape)[1:]) // len(m.modalities)
    if board is not None and tile is not None and any(t > b for t, b in zip(tile, board.max_tile, strict=False)):
        raise BudgetError(
            f"the model's tile {tuple(tile)} exceeds {board.name}'s largest tile {board.max_tile}; "
            "use a model exported with a smaller tile, a 2D model, or a larger board"
        )
    default = default_batch(mode, uvox, board, backend)
    if g.run_shape is not None and mode is Mode.SLICES:   # cropped: no more voxels per call than the full view
        full = _prod(unit_shape(m, g.padded_shape)[1:]) // len(m.modalities)
        default = max(1, min(default, default_batch(mode, full, board, backend) * full // max(uvox, 1)))
    estimate: dict[str, int] = {}
    budget_mb = None
    if board is None or costs is None:
        chosen = min(batch or default, units)
        if costs is not None:
            estimate = estimate_memory(g, chosen, costs, uvox, workers)
    else:
        budget_mb = board.memory_budget_mb
        budget = int(budget_mb * MB)
        cap = min(batch or default, units)
        fits = [b for b in range(1, cap + 1) if estimate_memory(g, b, costs, uvox, workers)["peak"] <= budget]
        while not fits and workers > 1:  # fewer calls in flight before refusing
            workers -= 1
            fits = [b for b in range(1, cap + 1) if estimate_memory(g, b, costs, uvox, workers)["peak"] <= budget]
        if not fits:
            need = estimate_memory(g, 1, costs, uvox)
            raise BudgetError(_refusal(m, g, board, need, batch))
        chosen = max(fits)
        estimate = estimate_memory(g, chosen, costs, uvox, workers)
    return Plan(
        mode=mode, backend=backend, precision=precision, threads=threads, batch=chosen, tile=tile,
        overlap=ov if mode is Mode.WINDOWS else 0.0, slice_axis=m.slice_axis,
        padded_shape=int_triple(g.padded_shape), units=units,
        workers=workers if mode is Mode.SLICES else 1,
        board=board.name if board is not None else None, memory_budget_mb=budget_mb,
        estimated_peak_mb=round(estimate["peak"] / MB, 1) if estimate else None,
        estimate_mb={k: round(v / MB, 1) for k, v in estimate.items()},
    )


def _refusal(m: Manifest, g: Geometry, board, need: dict[str, int], batch: int | None) -> str:
    need_mb = need["peak"] / MB
    ram_needed = int(math.ceil(need_mb / board.memory_fraction))
    worst = max((k for k in need if k != "peak"), key=lambda k: need[k])
    hints = [f"a board with at least {ram_needed} MB of RAM (--ram-mb for RAM variants)"]
    if m.dims == 3:
        hints.insert(0, "a model with a smaller tile, or the 2D model")
    else:
        hints.insert(0, "a scan cropped to the brain")
    if g.resampled:
        hints.insert(0, "a scan already at the model's spacing (resampling is the largest step)")
    return (f"this run needs about {need_mb:.0f} MB at batch 1 ({worst} stage) but {board.name} allows "
            f"{board.memory_budget_mb:.0f} MB ({board.memory_fraction:.0%} of {board.ram_mb} MB); "
            f"what would fit: {'; '.join(hints)}")


def choose_artifact(m: Manifest, board=None, backend: str | None = None, precision: str | None = None,
                    installed: Sequence[str] = BACKENDS) -> tuple[str, str]:
    """``(backend, precision)`` to run: the user's choice, else the board's preference order
    among the model's artifacts whose runtime is installed, else the model's first artifact."""
    have = [(a.backend, a.precision) for a in m.artifacts]
    if board is None:
        art = m.artifact(backend, precision)
        return art.backend, art.precision
    check_board_backend(board, backend, installed)  # rpi3 --backend onnx; rpi3 without LiteRT
    backends = [backend] if backend else [b for b in board.backends if b in installed]
    precisions = [precision] if precision else list(board.precisions)
    for b in backends:
        for p in precisions:
            if (b, p) in have:
                return b, p
    listed = ", ".join(f"{b}/{p}" for b, p in have)
    raise ModelError(
        f"model {m.name!r} has no artifact {board.name} can run (it wants backends "
        f"{', '.join(backends) or 'none installed'} with precisions {', '.join(precisions)}; the model has {listed}); "
        "choose --backend/--precision or export the missing variant"
    )


def roofline_ms(macs: int, bytes_moved: int, board) -> dict[str, float]:
    """Roofline estimate of one slice or tile on ``board``: compute time (2 FLOP per MAC at
    the board's sustained rate) against memory time (bytes over bandwidth); the larger wins."""
    compute = 2.0 * macs / (board.peak_gflops * board.sustained_fraction * 1e9) * 1e3
    memory = bytes_moved / (board.bandwidth_gbs * 1e9) * 1e3
    return {"compute_ms": round(compute, 3), "memory_ms": round(memory, 3),
            "estimate_ms": round(max(compute, memory), 3),
            "bound": "compute" if compute >= memory else "memory"}


# -- geometry of a run: sizes known before any buffer exists --------------------------------
def geometry_for(m: Manifest, scan, fixed: bool = True) -> Geometry:
    """The sizes a run of ``m`` over ``scan`` will hold, computed before any of them exists
    (``fixed``: the artifact's 2D plane is fixed to the tile, see :func:`padding_for`)."""
    from .scan import voxel_spacing

    tf = orientation_transform(scan.affine, m.orientation)
    o_shape = int_triple(scan.shape[int(np.flatnonzero(tf[:, 0] == ax)[0])] for ax in range(3))
    o_spacing = voxel_spacing(reoriented_affine(scan.affine, tf, scan.shape))
    resampled = needs_resampling(o_spacing, m.spacing_mm)
    p_shape = resampled_shape(o_shape, o_spacing, m.spacing_mm) if resampled else o_shape
    widths = padding_for(m, p_shape, fixed)
    padded = int_triple(n + a + b for n, (a, b) in zip(p_shape, widths, strict=False))
    return Geometry(len(m.modalities), len(m.channels), scan.shape, int_triple(p_shape), padded, resampled,
                    dims=m.dims, normalised_copy=normalises_first(m))


def fixed_plane(lm) -> bool:
    """Whether the loaded 2D artifact takes only its manifest's tile in-plane (a TFLite graph
    exported at a fixed size); False when its spatial dimensions are dynamic (ONNX)."""
    shape = lm.backend.input.shape
    spatial = shape[2:] if lm.manifest.layout.startswith("NC") else shape[1:-1]
    return all(isinstance(d, int) for d in spatial)


def padding_for(m: Manifest, shape: Sequence[int], fixed: bool = True) -> list[tuple[int, int]]:
    """Padding a prepared volume needs for the model: tile minimum and ``divisible_by``.

    2D: planes smaller than the tile are padded up to it; a larger plane is refused when the
    artifact is ``fixed`` to the tile, else padded to a multiple of ``divisible_by``.
    """
    if m.dims != 2:
        return pad_widths(shape, model_tile(m), (m.divisible_by,) * 3)
    plane = [ax for ax in range(3) if ax != m.slice_axis]
    minimum, multiple = [1, 1, 1], [1, 1, 1]
    for ax, t in zip(plane, m.tile or (1, 1), strict=False):
        minimum[ax] = t
        multiple[ax] = m.divisible_by
    if m.tile is not None and fixed:
        for ax, t in zip(plane, m.tile, strict=False):
            if shape[ax] > t:
                raise ScanError(
                    f"the prepared scan is {shape[ax]} voxels along axis {ax} but this artifact of the model "
                    f"takes fixed {t}-voxel slices; use its ONNX artifact (--backend onnx), whose size is "
                    "dynamic, or crop the scan"
                )
    return pad_widths(shape, tuple(minimum), tuple(multiple))


def check_enough_slices(m: Manifest, prepared_shape: Sequence[int]) -> None:
    """A 3D model needs a volume at least half its tile thick along every axis."""
    if m.dims == 3:
        for ax, (n, t) in enumerate(zip(prepared_shape, model_tile(m), strict=False)):
            if n * 2 < t:
                raise ScanError(
                    f"the scan has only {n} voxels along axis {ax} at the model's spacing; the 3D model "
                    f"needs at least {(t + 1) // 2} (its tile is {t}); use a 2D model for thin stacks"
                )
