"""Figures of a finished batch from its summary rows: steady-state throughput, peak RSS per worker."""

from __future__ import annotations

import pytest

from edge_infer.batch.figures import peak_rss_by_worker, rss_line, steady_throughput


def rows(finishes: dict[str, list[float]], rss: float = 200.0, resumed: bool = False) -> list[dict]:
    return [{"worker": w, "finished_unix_s": t, "peak_rss_mb": rss + i, "resumed": resumed}
            for w, ts in finishes.items() for i, t in enumerate(ts)]


class TestSteadyThroughput:
    def test_one_worker_counts_from_its_first_case(self):
        # a slow start (cluster, model load) before the first finish is outside the window
        assert steady_throughput(rows({"a": [10.0, 10.5, 11.0, 11.5, 12.0]})) == pytest.approx(2.0)

    def test_two_workers_start_after_both_finished_one(self):
        # two workers at 1 case per second each, the second 0.1 s behind: 2 cases per second
        got = steady_throughput(rows({"a": [1.0, 2.0, 3.0, 4.0], "b": [1.1, 2.1, 3.1, 4.1]}))
        assert got == pytest.approx(6 / 3.0)

    def test_rows_read_back_from_csv_are_strings(self):
        text = [{k: str(v) for k, v in r.items()} for r in rows({"a": [0.0, 1.0, 2.0]})]
        assert steady_throughput(text) == pytest.approx(1.0)

    def test_resumed_rows_and_missing_times_are_left_out(self):
        old = rows({"a": [0.0, 100.0]}, resumed=True)
        assert steady_throughput(old + rows({"a": [200.0, 201.0, 202.0]})) == pytest.approx(1.0)
        assert steady_throughput([{"worker": "a", "finished_unix_s": ""}] * 3) is None

    def test_too_few_cases_for_the_workers(self):
        assert steady_throughput(rows({"a": [1.0], "b": [1.2]})) is None


class TestPeakRssByWorker:
    def test_highest_per_worker(self):
        got = peak_rss_by_worker(rows({"a": [1.0, 2.0, 3.0], "b": [1.0]}, rss=100.0))
        assert got == {"a": 102.0, "b": 100.0}

    def test_failure_rows_without_a_figure_are_skipped(self):
        assert peak_rss_by_worker([{"worker": "a", "peak_rss_mb": ""}, {"worker": "", "peak_rss_mb": 5}]) == {}


class TestRssLine:
    def test_within_budget(self):
        line = rss_line(rows({"a": [1.0], "b": [2.0]}, rss=210.0), 6144.0, "x86-host")
        assert line == "peak RSS per worker: up to 210 MB over 2 workers, within the x86-host budget of 6144 MB"

    def test_over_budget(self):
        assert "OVER the rpi3 budget of 461 MB" in rss_line(rows({"a": [1.0]}, rss=500.0), 460.8, "rpi3")

    def test_no_board_no_verdict(self):
        assert rss_line(rows({"a": [1.0]}), None, None).endswith("over 1 worker")
        assert rss_line([], 100.0, "x") is None
