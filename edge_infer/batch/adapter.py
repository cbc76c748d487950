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
    crop: bool = True          # the manifest's crop rule; False: the full field of view (--no-crop)

    def model_choice(self, threads: int):
        """The run's :class:`~edge_infer.options.ModelChoice` (one backend call in flight per worker)."""
        from ..options import ModelChoice

        return ModelChoice(self.model, self.backend, self.precision, threads, 1, self.board)

    def key(self) -> str:
        """A digest of the options that change outputs (resume skips a case only when it matches)."""
        d = asdict(self)
        d.pop("threads")
        if d["crop"]:
            d.pop("crop")      # the default keeps the key of summaries written before the option existed
        d["board"] = getattr(self.board, "name", None)
        return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load(opts: RunOptions, threads: int):
    """Load the model once for a worker: ``(loaded model, backend calls in flight)``."""
    from ..planning import load_for_run

    return load_for_run(opts.model_choice(threads))


def run(case: Case, out_dir: Path, loaded, opts: RunOptions) -> dict:
    """Run one case exactly as ``edge-infer run`` would into ``out_dir``; return its report."""
    from ..options import FinishOptions, OutputSpec, ReadOptions, RunTuning
    from ..run import run_case

    rules = {m: list(r) for m, r in opts.series_rules} or None
    formats = ("nifti", "seg") if opts.out_format == "both" else (opts.out_format,)
    result = run_case(list(case.inputs), OutputSpec(out_dir, formats=formats, overlay=opts.overlay),
                      model=opts.model_choice(0), read=ReadOptions(case.modality_files(), rules),
                      finish=FinishOptions(opts.threshold, opts.keep_largest, opts.min_blob_mm3),
                      tuning=RunTuning(batch=opts.batch, overlap=opts.overlap, quiet=True, crop=opts.crop),
                      loaded=loaded)
    return {"report": result.report.to_dict(), "labels": result.segmentation.labels}
