"""The worker: segment complete studies (and NIfTI cases) one at a time, off the network thread.

A job is a study (``study:<hash>``, DICOM instances received over the network or dropped in
a folder) or a NIfTI case (``case:<hash>``). It runs when its files have been idle for the
configured time. Results go to the outbox in one rename; the job's state file then says
``done`` with the fingerprint of the files it used. A job killed half way is run again at
restart, and finds its outbox folder already there if it got that far: one result per job.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..dicom.cache import ParseCache
from ..errors import EdgeInferError
from .arrivals import Arrivals
from .audit import AuditLog
from .config import NodeConfig
from .prefetch import Prefetcher, quiet_seconds
from .spool import STATUS_DONE, STATUS_PROCESSING, STATUS_RERUN, Spool

log = logging.getLogger("edge_infer.node")


@dataclass
class JobResult:
    """What one job produced: file name -> bytes, and the report."""

    files: dict[str, bytes]
    report: dict[str, Any]


def job_id(key: str, fingerprint: str, run: int = 0) -> str:
    """``<hash>-<12 hex of the fingerprint>``: one id per set of input files (``-r<run>`` for a
    re-run asked for on demand, so its results are sent again)."""
    return f"{key.partition(':')[2]}-{fingerprint[:12]}" + (f"-r{run}" if run else "")


def nifti_inputs(folder: Path) -> list[Path]:
    """What :func:`~edge_infer.readers.read_scan` takes for a spooled NIfTI case: the folder if it
    is a BraTS-layout case, else its NIfTI file(s)."""
    from ..nifti import find_case_files, is_nifti_name

    if find_case_files(folder):
        return [folder]
    return sorted(p for p in folder.iterdir() if p.is_file() and is_nifti_name(p))


def segment_job(folder: Path, loaded, config: NodeConfig, dicom: bool, name: str | None = None,
                workers: int = 1, cache: ParseCache | None = None) -> JobResult:
    """Read, segment and render the outputs of one study or case folder.

    DICOM studies give a SEG (and the NIfTI mask if ``config.nifti``); NIfTI cases give the
    NIfTI mask. Both give the JSON report. ``workers`` backend calls run at once (2D models);
    ``cache`` holds the study's files parsed ahead (:class:`~edge_infer.dicom.cache.ParseCache`).
    Planned and rendered as ``edge-infer run`` does (:func:`~edge_infer.planning.plan_run`,
    :func:`~edge_infer.outputs.render_outputs`).
    """
    from ..outputs import Case, case_name, check_formats, output_names, render_outputs
    from ..planning import plan_run
    from ..report import build_report
    from ..segmentation import segment
    from ..timing import Timer

    timer = Timer()
    with timer.stage("read"):
        scan = _read_job(folder, loaded.manifest.modalities, config, dicom, cache)
    formats = ("nifti",) * (config.nifti or not dicom) + ("seg",) * dicom
    check_formats(scan, formats)  # a SEG that cannot be written is refused before inference
    plan = plan_run(scan, loaded, scan_held=False, workers=workers)
    seg = segment(scan, loaded, plan=plan, release_input=True)  # the SEG needs the DICOM references, not the voxels
    timer.seconds.update(seg.timings)
    names = output_names(name or case_name(scan, [folder]), formats)
    with timer.stage("write"):
        headers = cache.source_header if cache is not None and dicom else None
        out = render_outputs(Case(scan, seg, loaded, headers), names, lambda case: build_report(
            case.scan, case.model, case.seg, timer.seconds, names, case.provenance))
    return JobResult(out.files, out.report.to_dict())


def _read_job(folder: Path, modalities, config: NodeConfig, dicom: bool, cache: ParseCache | None = None):
    """The scan of a spooled study (the node's series rules apply) or NIfTI case."""
    if dicom:
        from ..dicom import read_dicom_folder

        rules: dict[str, Sequence[str]] | None = {k: list(v) for k, v in config.series_rules.items()} or None
        return read_dicom_folder(folder, modalities, rules=rules, cache=cache)
    from ..readers import read_scan

    return read_scan(nifti_inputs(folder), modalities)


class Worker:
    """Runs due jobs one at a time with one loaded model."""

    def __init__(self, config: NodeConfig, spool: Spool, audit: AuditLog, arrivals: Arrivals, loaded,
                 workers: int = 1, metrics=None) -> None:
        self.config = config
        self.workers = workers
        self.spool = spool
        self.audit = audit
        self.arrivals = arrivals
        self.loaded = loaded
        self.busy = threading.Event()
        self.metrics = metrics
        #: called once a job's results are in the outbox (the node wakes the sender)
        self.on_result = lambda: None
        #: parses the instances of waiting studies between jobs
        self.prefetcher = Prefetcher(spool, arrivals, quiet_seconds(config.idle_seconds))

    def recover(self) -> list[str]:
        """Queue every job the spool holds unfinished (after a restart); returns their keys."""
        keys = self.spool.pending()
        for key in keys:
            self.arrivals.mark(key)
        if keys:
            log.info("resuming %d unfinished job(s) from the spool", len(keys))
        return keys

    def run_forever(self, stop: threading.Event) -> None:
        """Run due jobs until ``stop`` is set; between jobs, parse the instances of waiting
        studies and sleep until the next job is due (at most ``poll_seconds``)."""
        while not stop.is_set():
            if self.loaded is None:  # the model is still loading and verifying
                stop.wait(self.config.poll_seconds)
                continue
            self.take_reruns()
            retry = False
            for key, seen in self.arrivals.due(self.config.idle_seconds):
                if stop.is_set():
                    return
                self.busy.set()
                try:
                    self.run_job(key)
                except OSError as exc:  # the spool itself failed (disk full, removed): retry later
                    log.error("job for %s could not be recorded: %s; will retry", key, exc.strerror or exc)
                    retry = True
                    continue
                finally:
                    self.busy.clear()
                    self.prefetcher.forget(key)
                self.arrivals.done(key, seen)
            self.idle(stop, self.config.poll_seconds if retry else None)

    def idle(self, stop: threading.Event, wait: float | None = None) -> None:
        """Between jobs: parse what arrived (stopping as soon as a job is due), then sleep until
        the oldest waiting job is due, at most ``poll_seconds`` (``wait`` after a job to retry),
        or until ``stop``. A study arriving while nothing waits is seen at the next poll, before
        it is due as long as ``poll_seconds`` <= ``idle_seconds``."""
        idle, poll = self.config.idle_seconds, self.config.poll_seconds
        t0 = time.monotonic()
        self.prefetcher.run(lambda: stop.is_set() or self.arrivals.until_due(idle) == 0.0
                            or time.monotonic() - t0 >= poll)
        if wait is None:
            until = self.arrivals.until_due(idle)
            wait = max(min(poll - (time.monotonic() - t0), poll if until is None else until), 0.0)
        stop.wait(wait)

    def take_reruns(self) -> list[str]:
        """Queue the studies an operator asked to re-run (``edge-infer rerun``); returns their keys."""
        keys = self.spool.take_reruns()
        for key in keys:
            state = self.spool.read_state(key)
            self.spool.write_state(key, **{**state, "status": STATUS_RERUN, "run": int(state.get("run", 0)) + 1})
            self.audit.record("rerun_requested", study=key.partition(":")[2])
            log.info("study %s: re-run requested", key.partition(":")[2])
            self.arrivals.mark(key)
        return keys

    def run_job(self, key: str) -> str:
        """Run one job if its files changed since it last ran; returns the outcome."""
        files = self.spool.files(key)
        kind, _, h = key.partition(":")
        state = self.spool.read_state(key)
        if not files:
            return self._nothing_usable(key, h, state) if kind == "study" else "empty"
        fingerprint = self.spool.fingerprint(key)
        if state.get("status") == STATUS_DONE and state.get("fingerprint") == fingerprint:
            log.info("study %s: nothing new to segment (already done as job %s); resend ignored, "
                     "`edge-infer rerun` runs it again", h, state.get("job"))
            self.audit.record("resend_ignored", **{kind: h}, job=state.get("job"), reason="no new input instances")
            return "unchanged"
        run = int(state.get("run", 0))
        jid = job_id(key, fingerprint, run)
        for series, count in sorted(self.spool.series_counts(key).items()):
            self.audit.record("series_received" if kind == "study" else "file_received",
                              **{kind: h}, series=series if kind == "study" else None,
                              instances=count if kind == "study" else None,
                              files=series if kind == "case" else None)
        self.spool.write_state(key, status=STATUS_PROCESSING, fingerprint=fingerprint, job=jid, run=run)
        sha = self.loaded.artifact.sha256
        self.audit.record("job_started", job=jid, **{kind: h}, model_sha256=sha, files=len(files))
        log.info("job %s started (%s %s, %d files)", jid, kind, h, len(files))
        t0 = time.perf_counter()
        try:
            result = segment_job(self.spool.job_dir(key) / "data", self.loaded, self.config,
                                 dicom=kind == "study", name=self._case_name(key), workers=self.workers,
                                 cache=self.prefetcher.cache)
            delivery = _delivery(self.config) if kind == "study" else None
            out = self.spool.commit_outbox(jid, result.files, delivery)
            self.on_result()
        except EdgeInferError as exc:
            return self._fail(key, jid, kind, h, str(exc), t0)
        except Exception as exc:  # an internal error must not stop the service: record it, go on
            log.exception("job %s hit an internal error", jid)
            return self._fail(key, jid, kind, h, f"internal error: {type(exc).__name__}: {exc}", t0)
        self.spool.write_state(key, status=STATUS_DONE, fingerprint=fingerprint, job=jid, run=run)
        seconds = round(time.perf_counter() - t0, 3)
        if self.metrics is not None:
            self.metrics.job("ok", seconds)
        self.audit.record("job_done", job=jid, **{kind: h}, model_sha256=sha, outcome="ok", seconds=seconds,
                          outputs=sorted(p.name for p in out.iterdir()),
                          volumes_ml=result.report.get("volumes_ml"))
        log.info("job %s done in %.2f s: results in %s", jid, seconds, out)
        return "ok"

    def _case_name(self, key: str) -> str | None:
        """The name a dropped NIfTI case had (sanitised at ingest), for its output files."""
        path = self.spool.job_dir(key) / "case.json"
        if not path.is_file():
            return None
        try:
            return str(json.loads(path.read_text(encoding="utf-8"))["name"]) or None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _nothing_usable(self, key: str, h: str, state: dict[str, Any]) -> str:
        """A study whose instances were all kept aside: failed/ with one line, unless already done."""
        kept = self.spool.other_series(key)
        if not kept:
            return "empty"
        if state.get("status") == STATUS_DONE:
            log.info("study %s: only instances that start no job arrived; already done as job %s, not re-run",
                     h, state.get("job"))
            self.audit.record("resend_ignored", study=h, job=state.get("job"), reason="no new input instances")
            return "unchanged"
        error = (f"no series the model can use: {describe_kept(kept)}; jobs start for modalities "
                 f"{', '.join(self.config.job_modalities)} (set job_modalities / job_sop_classes to change)")
        folder = self.spool.move_to_failed(key, error)
        self.audit.record("study_unusable", study=h, outcome="failed", error=error)
        log.error("study %s not segmented: %s (kept in %s)", h, error, folder)
        if self.metrics is not None:
            self.metrics.job("unusable", 0.0)
        return "unusable"

    def _fail(self, key: str, jid: str, kind: str, h: str, error: str, t0: float) -> str:
        if self.metrics is not None:
            self.metrics.job("failed", time.perf_counter() - t0)
        folder = self.spool.move_to_failed(key, error)
        self.audit.record("job_failed", job=jid, **{kind: h}, model_sha256=self.loaded.artifact.sha256,
                          outcome="failed", error=error, seconds=round(time.perf_counter() - t0, 3))
        log.error("job %s failed: %s (kept in %s)", jid, error, folder)
        return "failed"


def describe_kept(kept: dict[str, list[Path]]) -> str:
    """``"2 series kept aside (CT Image Storage x20, Segmentation Storage x1)"`` from their headers."""
    import pydicom

    from .classes import class_name

    parts = []
    for paths in kept.values():
        try:
            uid = str(pydicom.dcmread(paths[0], stop_before_pixels=True, specific_tags=["SOPClassUID"]).SOPClassUID)
        except (OSError, ValueError, AttributeError, pydicom.errors.InvalidDicomError):
            uid = "unreadable"
        parts.append(f"{class_name(uid)} x{len(paths)}")
    return f"{len(kept)} series kept aside ({', '.join(sorted(parts))})"


def _delivery(config: NodeConfig) -> dict[str, Any] | None:
    if config.destination is None:
        return None
    return {"destination": str(config.destination), "attempts": 0, "next_try": 0.0}

