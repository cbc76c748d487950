"""The one place where the batch runner calls the single-case run path.

Everything else in :mod:`edge_infer.batch` goes through :func:`load` and :func:`run`, so a
change of the run API (option dataclasses, a new module) is one edit here.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .cases import Case


@dataclass(frozen=True)
class RunOptions:
    """What ``edge-infer run`` is told, for every case of a batch (``board``: a resolved
    :class:`~edge_infer.boards.Board` or None; ``threads``: per worker, 0 for its cores)."""

    model: str | None = None
    backend: str | None = None
    precision: str | None = None
    threads: int = 0
    threshold: float | None = None
    keep_largest: bool = False
    min_blob_mm3: float = 0.0
    batch: int | None = None
    overlap: float | None = None
    overlay: bool = False
    out_format: str = "nifti"
    series_rules: tuple[tuple[str, tuple[str, ...]], ...] = ()
    board: object = None

    def key(self) -> str:
        """A digest of the options that change outputs (resume skips a case only when it matches)."""
        d = asdict(self)
        d.pop("threads")
        d["board"] = getattr(self.board, "name", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load(opts: RunOptions, threads: int):
    """Load the model once for a worker: ``(loaded model, backend calls in flight)``."""
    from ..pipeline import load_for_run

    return load_for_run(opts.model, opts.board, opts.backend, opts.precision, threads, 1)


def run(case: Case, out_dir: Path, loaded, opts: RunOptions) -> dict:
    """Run one case exactly as ``edge-infer run`` would into ``out_dir``; return its report."""
    from ..pipeline import run_case

    rules = {m: list(r) for m, r in opts.series_rules} or None
    result = run_case(list(case.inputs), out_dir, by_modality=case.modality_files(), series_rules=rules,
                      threshold=opts.threshold, keep_largest=opts.keep_largest, min_blob_mm3=opts.min_blob_mm3,
                      batch=opts.batch, overlap=opts.overlap, overlay=opts.overlay, loaded=loaded,
                      board=opts.board, out_format=opts.out_format, quiet=True, workers=1)
    return {"report": result.report, "labels": result.segmentation.labels}
