"""Planning a run with a real model: load it as a board asks, measure its backend's memory
costs, and make the :class:`~edge_infer.plan.Plan` (the pure planner is :mod:`edge_infer.plan`).

Used by :func:`edge_infer.run.run_case`, the DICOM node and the profiler alike.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from .backends import BackendName, installed_backends
from .cropping import box_sizes, crop_for_scan
from .memory import current_rss_bytes
from .model import LoadedModel, load_model
from .options import ModelChoice, RunTuning
from .plan import (
    GPU_PROVIDERS,
    BackendCosts,
    Execution,
    Plan,
    check_enough_slices,
    choose_artifact,
    default_workers,
    fixed_plane,
    geometry_for,
    make_plan,
    unit_shape,
)
from .scan import Scan
from .triples import triple


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


def plan_run(scan: Scan, lm: LoadedModel, *, board=None, tuning: RunTuning = RunTuning(), baseline: int = 0,
             scan_held: bool = True, workers: int = 1) -> Plan:
    """Check the scan against the model and plan the run (with a board: to its memory budget).

    ``scan_held=False``: the run frees the scan's voxels once prepared (``segment(release_input=True)``).
    ``tuning`` gives batch and overlap, and ``crop``: follow the manifest's crop rule (False: the
    full field of view, ``--no-crop``); the plan then holds the box and its estimates are of the
    cropped size; a scan with no
    foreground is refused here, before inference.
    """
    m = lm.manifest
    scan = scan.select(m.modalities)
    fixed = fixed_plane(lm)
    g = replace(geometry_for(m, scan, fixed), scan_held=scan_held)
    check_enough_slices(m, g.prepared_shape)
    box = crop_for_scan(m, scan, g, fixed) if tuning.crop and m.crop.mode == "nonzero" else None
    if box is not None:
        g = replace(g, run_shape=triple(box_sizes(box)))
    costs = measure_costs(lm, unit_shape(m, g.engine_shape), baseline) if board is not None else None
    execution = Execution(lm.artifact.backend, lm.artifact.precision, lm.backend.threads, workers)
    plan = make_plan(m, g, execution, batch=tuning.batch, overlap=tuning.overlap, board=board, costs=costs)
    return replace(plan, crop_box=box)


def load_for_run(choice: ModelChoice) -> tuple[LoadedModel, int]:
    """Load a model for a run: backend, precision and threads from the board where not given,
    and how many backend calls the run keeps in flight (:func:`~edge_infer.plan.default_workers`).

    ``choice.threads`` are the CPU threads of the whole run: each of the workers gets
    ``threads // workers`` of them.
    """
    from .manifest import load_manifest
    from .model import resolve_model

    board, backend, precision = choice.board, choice.backend, choice.precision
    m = load_manifest(resolve_model(choice.model))
    opts: dict = {}
    if board is not None:
        backend, precision = choose_artifact(m, board, backend, precision, installed_backends())
        if backend == BackendName.ONNX and board.providers:
            opts["providers"] = list(board.providers)
    cpus = os.cpu_count() or 1
    total = choice.threads or (min(board.threads, cpus) if board is not None else cpus)
    w = choice.workers or default_workers(m.dims, total, board, backend or BackendName.ONNX.value)
    lm = load_model(choice.model, backend=backend, precision=precision, threads=max(1, total // w), **opts)
    on_gpu = any(p in GPU_PROVIDERS for p in lm.describe().get("providers", [])[:1])
    return lm, (1 if on_gpu and not choice.workers else w)
