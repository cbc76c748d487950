"""The typed run report: `build_report`, `Report.to_dict`, and budget checks on the typed record."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

from edge_infer.model import load_model
from edge_infer.report import budget_breaches, build_report, check_budget, provenance
from edge_infer.readers import read_scan
from edge_infer.segmentation import segment


@pytest.fixture(scope="module")
def report(case_dir, model2d):
    lm = load_model(model2d, threads=1)
    scan = read_scan([case_dir], lm.manifest.modalities)
    seg = segment(scan, lm)
    return build_report(scan, lm, seg, {"read": 0.5, "infer": 2.0}, {"mask": "c_mask.nii.gz"}, provenance(lm))


def board(**kw):
    values = dict(name="tiny", memory_budget_mb=1e6, latency_per_unit_ms=1e6, latency_per_volume_s=1e6,
                  to_dict=lambda: {"name": "tiny"})
    values.update(kw)
    return SimpleNamespace(**values)


class TestBuildReport:
    def test_per_unit_time_from_the_infer_stage(self, report):
        assert report.per_unit_ms == pytest.approx(2000.0 / report.plan.units, rel=1e-3)
        assert report.timings_s == {"read": 0.5, "infer": 2.0}


class TestReportToDict:
    def test_keys_in_order_and_budget_only_with_a_board(self, report):
        d = report.to_dict()
        assert list(d)[:3] == ["edge_infer_version", "created_utc", "input"] and "budget" not in d
        assert d["plan"]["mode"] == report.plan.mode.value and d["outputs"] == {"mask": "c_mask.nii.gz"}
        checked = replace(report, budget=check_budget(board(), report))
        assert checked.to_dict()["budget"]["ok"] is True


class TestBudgetBreaches:
    def test_within_budgets(self, report):
        assert budget_breaches(board(), report) == []

    @pytest.mark.parametrize("limit, words", [
        ({"memory_budget_mb": 1.0}, "memory budget"),
        ({"latency_per_unit_ms": 0.001}, "ms per slice is over tiny's budget"),
        ({"latency_per_volume_s": 1.0}, "2.5 s per volume is over"),
    ])
    def test_each_budget_is_read_from_the_typed_report(self, report, limit, words):
        found = budget_breaches(board(**limit), report)
        assert len(found) == 1 and words in found[0]
