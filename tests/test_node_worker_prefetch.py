"""The worker between jobs: it parses waiting studies ahead and wakes when the oldest is due (issue 16)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
import pytest
from node_helpers import study_files, write_study

from edge_infer.dicom import cache as cache_module
from edge_infer.node.arrivals import Arrivals
from edge_infer.node.audit import AuditLog
from edge_infer.node.config import load_config
from edge_infer.node.prefetch import Prefetcher, quiet_seconds
from edge_infer.node.spool import Spool
from edge_infer.node.worker import Worker
from edge_infer.uids import uid_hash


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One 4-series study (32x32x12) written by the DICOM factory."""
    return write_study(tmp_path_factory.mktemp("study"), seed=2)


def spool_study(spool: Spool, files: list[Path]) -> str:
    for p in files:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        spool.store_instance(p.read_bytes(), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    return f"study:{uid_hash(str(ds.StudyInstanceUID))}"


def make_worker(tmp_path: Path, loaded, **config) -> Worker:
    spool = Spool(tmp_path / "spool")
    cfg = load_config(None, spool=str(spool.root), **config)
    return Worker(cfg, spool, AuditLog(spool.audit_path), Arrivals(), loaded)


class TestUntilDue:
    def test_seconds_until_the_oldest_is_due(self):
        clock = [100.0]
        arrivals = Arrivals(clock=lambda: clock[0])
        assert arrivals.until_due(5.0) is None
        arrivals.mark("study:aa")
        clock[0] = 102.0
        arrivals.mark("study:bb")
        assert arrivals.until_due(5.0) == pytest.approx(3.0)
        clock[0] = 106.0
        assert arrivals.until_due(5.0) == 0.0

    def test_a_later_arrival_never_makes_it_sooner(self):
        clock = [0.0]
        arrivals = Arrivals(clock=lambda: clock[0])
        arrivals.mark("study:aa")
        clock[0] = 1.0
        before = arrivals.until_due(5.0)
        arrivals.mark("study:bb")
        assert arrivals.until_due(5.0) == before == pytest.approx(4.0)


class TestPrefetcherRun:
    def test_parses_each_new_instance_once(self, tmp_path, study):
        spool, arrivals = Spool(tmp_path / "spool"), Arrivals()
        files = study_files(study)
        key = spool_study(spool, files)
        arrivals.mark(key)
        prefetcher = Prefetcher(spool, arrivals)
        assert prefetcher.run(lambda: False) == len(files)
        assert prefetcher.run(lambda: False) == 0 and prefetcher.cache.cached_bytes > 0

    def test_stops_when_enough_one_file_at_a_time(self, tmp_path, study):
        spool, arrivals = Spool(tmp_path / "spool"), Arrivals()
        arrivals.mark(spool_study(spool, study_files(study)))
        prefetcher = Prefetcher(spool, arrivals)
        asked = []
        assert prefetcher.run(lambda: asked.append(1) or len(asked) > 2) == 2

    def test_a_study_is_parsed_once_quiet(self, tmp_path, study):
        clock = [0.0]
        spool, arrivals = Spool(tmp_path / "spool"), Arrivals(clock=lambda: clock[0])
        arrivals.mark(spool_study(spool, study_files(study)))
        prefetcher = Prefetcher(spool, arrivals, quiet=0.5)
        clock[0] = 0.4
        assert prefetcher.run(lambda: False) == 0
        clock[0] = 0.5
        assert prefetcher.run(lambda: False) == len(study_files(study))

    def test_studies_not_waiting_are_left_alone(self, tmp_path, study):
        spool, arrivals = Spool(tmp_path / "spool"), Arrivals()
        spool_study(spool, study_files(study))
        assert Prefetcher(spool, arrivals).run(lambda: False) == 0

    def test_an_internal_error_stops_that_study_only(self, tmp_path, study, monkeypatch, caplog):
        spool, arrivals = Spool(tmp_path / "spool"), Arrivals()
        arrivals.mark(spool_study(spool, study_files(study)))
        prefetcher = Prefetcher(spool, arrivals)
        monkeypatch.setattr(prefetcher.cache, "prefetch", lambda path: 1 / 0)
        assert prefetcher.run(lambda: False) == 0
        assert "parsing ahead stopped (ZeroDivisionError)" in caplog.text
        assert prefetcher.run(lambda: False) == 0 and caplog.text.count("parsing ahead stopped") == 1


class TestQuietSeconds:
    def test_a_quarter_of_the_idle_time_at_most_one_second(self):
        assert [quiet_seconds(s) for s in (0.4, 2.0, 10.0)] == [0.1, 0.5, 1.0]


class TestForget:
    def test_drops_the_study(self, tmp_path, study):
        spool, arrivals = Spool(tmp_path / "spool"), Arrivals()
        key = spool_study(spool, study_files(study))
        arrivals.mark(key)
        prefetcher = Prefetcher(spool, arrivals)
        prefetcher.run(lambda: False)
        prefetcher.forget(key)
        assert len(prefetcher.cache) == 0 and prefetcher.cache.cached_bytes == 0


class TestRunForever:
    def test_wakes_when_the_study_is_due_not_at_the_next_poll(self, tmp_path):
        """Marked just after a poll, the study is due 0.3 s after the next poll: the worker runs
        it at its due time, not at the poll after (0.7 s late)."""
        worker = make_worker(tmp_path, loaded=object(), idle_seconds=1.3, poll_seconds=1.0)
        ran: list[float] = []
        worker.run_job = lambda key: ran.append(time.monotonic()) or "ok"
        polled = threading.Event()
        take_reruns = worker.take_reruns
        worker.take_reruns = lambda: polled.set() or take_reruns()
        stop = threading.Event()
        thread = threading.Thread(target=worker.run_forever, args=(stop,))
        thread.start()
        try:
            polled.wait(5.0)                     # a poll just began
            marked = time.monotonic()
            worker.arrivals.mark("study:" + "ab" * 8)
            deadline = time.monotonic() + 3.0
            while not ran and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            thread.join(5.0)
        assert len(ran) == 1 and 1.3 <= ran[0] - marked < 1.3 + 0.15
        assert len(worker.arrivals) == 0

    def test_job_reads_the_parsed_study_and_drops_it(self, tmp_path, study, model2d, monkeypatch):
        pytest.importorskip("highdicom")
        from edge_infer.model import load_model

        worker = make_worker(tmp_path, load_model(model2d), idle_seconds=1.5, poll_seconds=0.05)
        key = spool_study(worker.spool, study_files(study))
        stop = threading.Event()
        parsed_ahead = []

        def record(key):
            parsed_ahead.append(len(worker.prefetcher.cache))
            monkeypatch.setattr(cache_module, "decode_pixels", lambda inst: 1 / 0)  # only cached pixels work
            return Worker.run_job(worker, key)

        worker.run_job = record
        thread = threading.Thread(target=worker.run_forever, args=(stop,))
        worker.arrivals.mark(key)
        thread.start()
        try:
            deadline = time.monotonic() + 30.0
            while len(worker.arrivals) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(30.0)
        assert parsed_ahead == [len(study_files(study))]
        assert len(list(worker.spool.outbox.glob("*/*_seg.dcm"))) == 1
        assert len(worker.prefetcher.cache) == 0
