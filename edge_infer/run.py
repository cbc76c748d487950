"""One case from files to files: read -> prepare -> plan -> infer -> finish -> write.

:func:`run_case` is what ``edge-infer run`` calls; choices arrive as the small records of
:mod:`edge_infer.options`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import BudgetError
from .memory import current_rss_bytes
from .model import LoadedModel
from .options import FinishOptions, ModelChoice, OutputSpec, ReadOptions, RunTuning
from .outputs import Case, case_name, check_formats, commit_outputs, output_names, render_outputs
from .planning import load_for_run, plan_run
from .readers import read_scan
from .report import Report, build_report, check_budget
from .safety import check_stem, output_stem
from .segmentation import Segmentation, segment
from .timing import Timer
from .writers import check_output_dir


@dataclass
class RunResult:
    """What a run wrote (output kind -> path), its report, and the in-memory segmentation."""

    report: Report
    outputs: dict[str, Path]
    segmentation: Segmentation


def run_case(inputs: Sequence[str | Path], output: OutputSpec, *, model: ModelChoice = ModelChoice(),
             read: ReadOptions = ReadOptions(), finish: FinishOptions = FinishOptions(),
             tuning: RunTuning = RunTuning(), loaded: LoadedModel | None = None) -> RunResult:
    """Read a scan, segment it, and write its outputs atomically into ``output.out_dir``.

    With a board (``model.board``) the run is planned to its memory budget (refused with
    :class:`BudgetError` before any working buffer exists if it cannot fit) and checked
    against its latency budgets afterwards: a breach is a warning, or with ``output.strict``
    an error that writes nothing. ``loaded``: a model already loaded (it runs one backend
    call at a time unless ``model.workers`` says otherwise).
    """
    timer = Timer()
    check_output_dir(output.out_dir)
    if output.name is not None:
        check_stem(output.name)  # refuse `--name ../x` before any work
    with timer.stage("load_model"):
        lm, workers = (loaded, model.workers or 1) if loaded is not None else load_for_run(model)
    baseline = current_rss_bytes()
    with timer.stage("read"):
        scan = read_scan(inputs, lm.manifest.modalities, by_modality=read.by_modality,
                         series_rules=read.series_rules)
    check_formats(scan, output.formats)
    # only the overlay needs the scan's voxels after preparation: without one they are freed
    plan = plan_run(scan, lm, board=model.board, tuning=tuning, baseline=baseline,
                    scan_held=output.overlay, workers=workers)
    seg = segment(scan, lm, finish, tuning=tuning, plan=plan, release_input=not output.overlay)
    timer.seconds.update(seg.timings)
    names = output_names(output_stem(output.name, case_name(scan, inputs)), output.formats, output.overlay)
    with timer.stage("write"):
        out = render_outputs(Case(scan, seg, lm), names, lambda case: _report(case, timer, names, model.board,
                                                                              output.strict))
        paths = commit_outputs(out.files, output.out_dir)
    out.report.timings_s["write"] = round(timer.seconds["write"], 4)
    return RunResult(out.report, {kind: paths[name] for kind, name in names.items()}, seg)


def _report(case: Case, timer: Timer, names: dict[str, str], board, strict: bool) -> Report:
    """The case's report, checked against ``board``'s budgets (``strict``: a breach raises)."""
    report = build_report(case.scan, case.model, case.seg, timer.seconds, names, case.provenance)
    if board is not None:
        report.budget = check_budget(board, report)
        if report.budget.breaches and strict:
            raise BudgetError("; ".join(report.budget.breaches) + " (--strict: nothing written)")
        report.warnings.extend(f"budget: {b}" for b in report.budget.breaches)
    return report
