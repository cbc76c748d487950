"""The report of a run as a typed record: input identity without patient data, model, plan,
timings, volumes, warnings and (with a board) the budget check.

:meth:`Report.to_dict` is used only at the edges (the JSON file, ``edge-infer run --json``).
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import __version__
from .memory import peak_rss_mb
from .model import LoadedModel
from .plan import Mode, Plan
from .scan import Scan
from .segmentation import Segmentation


@dataclass
class BudgetCheck:
    """A finished run checked against a board's budgets."""

    board: dict[str, Any]
    breaches: list[str]
    measured_on: str
    estimated_peak_mb: float | None
    measured_peak_mb: float

    @property
    def ok(self) -> bool:
        return not self.breaches

    def to_dict(self) -> dict[str, Any]:
        return {"board": self.board, "breaches": self.breaches, "ok": self.ok, "measured_on": self.measured_on,
                "estimated_peak_mb": self.estimated_peak_mb, "measured_peak_mb": self.measured_peak_mb}


@dataclass
class Report:
    """What a run did; field names are the JSON report's keys."""

    created_utc: str
    input: dict[str, Any]
    geometry: dict[str, Any]
    model: dict[str, Any]
    provenance: dict[str, Any]
    plan: Plan
    thresholds: dict[str, float]
    labels: dict[str, str]
    volumes_ml: dict[str, float]
    timings_s: dict[str, float]
    backend_seconds: float
    overhead_fraction: float | None
    per_unit_ms: float
    peak_rss_mb: float
    outputs: dict[str, str]
    warnings: list[str] = field(default_factory=list)
    budget: BudgetCheck | None = None
    edge_infer_version: str = __version__
    crop: dict[str, Any] | None = None    # issue 15: box, units skipped, compute saved (None: full view)

    def to_dict(self) -> dict[str, Any]:
        """The JSON report (keys in their documented order; ``budget`` only with a board)."""
        out = {"edge_infer_version": self.edge_infer_version, "created_utc": self.created_utc,
               "input": self.input, "geometry": self.geometry, "model": self.model, "provenance": self.provenance,
               "plan": self.plan.to_dict(), "thresholds": self.thresholds, "labels": self.labels,
               "volumes_ml": self.volumes_ml, "timings_s": self.timings_s, "backend_seconds": self.backend_seconds,
               "overhead_fraction": self.overhead_fraction, "per_unit_ms": self.per_unit_ms,
               "peak_rss_mb": self.peak_rss_mb, "outputs": self.outputs, "warnings": self.warnings,
               "crop": self.crop}
        if self.budget is not None:
            out["budget"] = self.budget.to_dict()
        return out


def provenance(model: LoadedModel) -> dict[str, str]:
    """Software and model identity written into every output (mask header, SEG, overlay, report)."""
    return {"software": f"edge-infer {__version__}", "model": model.manifest.name,
            "model_version": model.manifest.version, "model_sha256": model.artifact.sha256,
            "artifact": model.artifact.file, "precision": model.artifact.precision}


def build_report(scan: Scan, lm: LoadedModel, seg: Segmentation, timings: dict[str, float],
                 outputs: dict[str, str], prov: dict[str, str]) -> Report:
    """The report of a run: input identity without patient data, model, plan, timings, volumes."""
    from nibabel.orientations import aff2axcodes

    total = sum(timings.values())
    infer = timings.get("infer", 0.0)
    return Report(
        created_utc=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        input={**scan.source, "modalities": list(scan.modalities)},
        geometry={"shape": list(scan.shape), "spacing_mm": [round(s, 6) for s in scan.spacing],
                  "orientation": "".join(aff2axcodes(scan.affine)), "affine": np.round(scan.affine, 6).tolist()},
        model={**lm.describe(), "manifest_name": lm.manifest.name, "intended_use": lm.manifest.intended_use},
        provenance=prov, plan=seg.plan,
        thresholds=dict(zip(lm.manifest.channels, seg.thresholds, strict=False)),
        labels={str(lb.value): lb.name for lb in lm.manifest.labels},
        volumes_ml=seg.volumes_ml,
        timings_s={k: round(v, 4) for k, v in timings.items()},
        backend_seconds=round(seg.backend_seconds, 4),
        overhead_fraction=round(1.0 - seg.backend_seconds / total, 4) if total > 0 else None,
        per_unit_ms=round(1000.0 * infer / max(seg.plan.units, 1), 3),
        peak_rss_mb=round(peak_rss_mb(), 1),
        outputs=outputs,
        warnings=[*scan.source.get("warnings", []), *seg.warnings],
        crop=seg.crop.to_dict() if seg.crop is not None else None,
    )


def budget_breaches(board, report: Report) -> list[str]:
    """Budget checks of a finished run: peak RSS, latency per slice/tile, latency per volume."""
    out = []
    if report.peak_rss_mb > board.memory_budget_mb:
        out.append(f"peak RSS {report.peak_rss_mb:.0f} MB is over {board.name}'s memory budget "
                   f"{board.memory_budget_mb:.0f} MB")
    unit = "slice" if report.plan.mode is Mode.SLICES else "tile"
    if report.per_unit_ms > board.latency_per_unit_ms:
        out.append(f"{report.per_unit_ms:.0f} ms per {unit} is over {board.name}'s budget of "
                   f"{board.latency_per_unit_ms:.0f} ms")
    total = sum(report.timings_s.values())
    if total > board.latency_per_volume_s:
        out.append(f"{total:.1f} s per volume is over {board.name}'s budget of {board.latency_per_volume_s:.0f} s")
    return out


def check_budget(board, report: Report) -> BudgetCheck:
    """The budget record of a finished run on ``board``."""
    return BudgetCheck(board=board.to_dict(), breaches=budget_breaches(board, report), measured_on=machine(),
                       estimated_peak_mb=report.plan.estimated_peak_mb, measured_peak_mb=report.peak_rss_mb)


def machine() -> str:
    """What the run was measured on, e.g. ``x86_64 Linux (16 cpus)``."""
    return f"{platform.machine()} {platform.system()} ({os.cpu_count()} cpus)"
