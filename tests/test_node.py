"""Tests of the DICOM node: configuration, spool, instance checks, worker, watcher, and the
real service (``edge-infer serve`` / ``watch`` as subprocesses) with DCMTK peers on loopback."""

from __future__ import annotations

import io
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pydicom
import pytest

from node_helpers import (
    LOOPBACK,
    fake_seg_bytes,
    MARKERS,
    NODE_AE,
    echo_ok,
    free_port,
    have_dcmtk,
    received_segs,
    report_and_log_files,
    start_node,
    start_storescp,
    storescu,
    study_files,
    text_of,
    wait_listening,
    wait_until,
    write_config,
    write_study,
)

pynetdicom = pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from edge_infer.uids import uid_hash  # noqa: E402
from edge_infer.model import load_model  # noqa: E402
from edge_infer.node.arrivals import Arrivals  # noqa: E402
from edge_infer.node.audit import AuditLog, read_audit  # noqa: E402
from edge_infer.node.config import ConfigError, Destination, load_config  # noqa: E402
from edge_infer.node.scp import STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH, InstanceProblem, check_instance  # noqa: E402
from edge_infer.node.sender import backoff  # noqa: E402
from edge_infer.node.spool import Spool, instance_name  # noqa: E402
from edge_infer.node.watch import Watcher, case_key  # noqa: E402
from edge_infer.node.worker import Worker  # noqa: E402

needs_dcmtk = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK (storescu, storescp, echoscu) is not installed")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One 4-series study (32x32x12) written by the DICOM factory."""
    return write_study(tmp_path_factory.mktemp("study"), seed=1)


@pytest.fixture(scope="module")
def loaded(model2d):
    return load_model(model2d)


def _spool_study(spool: Spool, files) -> str:
    for p in files:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        spool.store_instance(p.read_bytes(), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    return f"study:{uid_hash(str(ds.StudyInstanceUID))}"


def _truncated(path: Path) -> bytes:
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# -- configuration ----------------------------------------------------------------------------
class TestLoadConfig:
    def test_toml_then_flags(self, tmp_path):
        path = tmp_path / "node.toml"
        path.write_text('spool = "s"\nport = 104\nallowed_aes = ["A", "B"]\n[destination]\n'
                        'ae_title = "PACS"\nhost = "127.0.0.1"\nport = 11113\n')
        cfg = load_config(path, port=11112, idle_seconds=None)
        assert cfg.port == 11112 and cfg.allowed_aes == ("A", "B") and cfg.bind == "127.0.0.1"
        assert cfg.destination == Destination("PACS", "127.0.0.1", 11113)

    def test_job_classes_default_to_mr_and_are_configurable(self):
        cfg = load_config(None, spool="s")
        assert cfg.job_modalities == ("MR",) and "1.2.840.10008.5.1.4.1.1.4" in cfg.job_sop_classes
        cfg = load_config(None, spool="s", job_modalities=["MR", "CT"], job_sop_classes="1.2.840.10008.5.1.4.1.1.2")
        assert cfg.job_modalities == ("MR", "CT") and cfg.job_sop_classes == ("1.2.840.10008.5.1.4.1.1.2",)

    def test_dicomweb_destination(self, tmp_path, monkeypatch):
        from edge_infer.node.dicomweb import WebDestination, credentials

        cfg = load_config(None, spool="s", destination="dicomweb+https://pacs.example.org/dicom-web/")
        assert cfg.destination == WebDestination("https://pacs.example.org/dicom-web")
        table = {"url": "dicomweb+http://127.0.0.1:8042/dicom-web", "auth": "bearer", "credentials_env": "TOKEN_X"}
        dest = load_config(None, spool="s", destination=table).destination
        monkeypatch.setenv("TOKEN_X", "abc")
        assert credentials(dest) == "abc" and "abc" not in str(dest)
        monkeypatch.delenv("TOKEN_X")
        with pytest.raises(ConfigError, match=r"no token in \$TOKEN_X"):
            credentials(dest)

    @pytest.mark.parametrize("value,match", [
        ("dicomweb+https://user:pw@pacs/dicom-web", "credentials in the destination URL"),
        ({"url": "dicomweb+http://h/x", "auth": "basic"}, "needs exactly one of credentials_file"),
        ({"url": "dicomweb+http://h/x", "auth": "digest"}, "not one of none, basic, bearer"),
        ({"url": "dicomweb+http://h/x", "password": "x"}, "unknown destination key"),
    ])
    def test_dicomweb_destination_refused(self, value, match):
        with pytest.raises(ConfigError, match=match):
            load_config(None, spool="s", destination=value)

    def test_destination_text(self):
        assert load_config(None, spool="s", destination="PACS@127.0.0.1:104").destination.port == 104

    @pytest.mark.parametrize("overrides,match", [
        ({"spool": "s", "colour": 1}, "unknown config key.*colour.*valid keys"),
        ({"spool": "s", "ae_title": "A" * 17}, "not a valid AE title"),
        ({"spool": "s", "port": 70000}, "out of range"),
        ({"spool": "s", "idle_seconds": 0}, "more than 0"),
        ({"spool": "s", "destination": "PACS:104"}, "AE@HOST:PORT"),
        ({"spool": "s", "job_modalities": []}, "job_modalities must be a non-empty list"),
        ({"spool": "s", "health_port": 70000}, "health_port 70000 is out of range"),
        ({}, "no spool folder"),
    ])
    def test_refuses(self, overrides, match):
        with pytest.raises(ConfigError, match=match):
            load_config(None, **overrides)

    def test_bad_toml(self, tmp_path):
        (tmp_path / "bad.toml").write_text("port = = 3")
        with pytest.raises(ConfigError, match="not valid TOML"):
            load_config(tmp_path / "bad.toml")


# -- spool, audit, instance checks -------------------------------------------------------------
class TestSpool:
    def test_names_are_hashes_of_uids(self, tmp_path):
        spool = Spool(tmp_path)
        path = spool.instance_path("1.2.3", "../../etc", "1.2.3.4/../../x")
        assert path.resolve().is_relative_to(spool.studies.resolve())
        assert "etc" not in str(path) and path.name == instance_name("1.2.3", "../../etc", "1.2.3.4/../../x")

    def test_store_is_atomic_and_idempotent(self, tmp_path, study):
        spool = Spool(tmp_path)
        f = study["t1"][0]
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        for _ in range(2):
            spool.store_instance(f.read_bytes(), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        key = f"study:{uid_hash(ds.StudyInstanceUID)}"
        assert len(spool.files(key)) == 1 and list(spool.tmp.iterdir()) == []
        assert spool.pending() == [key]

    def test_identical_resend_is_not_rewritten_a_changed_one_is(self, tmp_path, study):
        spool = Spool(tmp_path)
        f = study["t1"][0]
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        ids = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
        path = spool.store_instance(f.read_bytes(), *ids)
        inode = path.stat().st_ino
        assert spool.store_instance(f.read_bytes(), *ids).stat().st_ino == inode
        changed = f.read_bytes()[:-2] + b"\x01\x02"
        assert spool.store_instance(changed, *ids).read_bytes() == changed and path.stat().st_ino != inode

    def test_kept_aside_instances_are_not_input(self, tmp_path, study):
        spool = Spool(tmp_path)
        ds = pydicom.dcmread(study["t1"][0], stop_before_pixels=True)
        spool.store_instance(b"x", ds.StudyInstanceUID, "1.2.9", "1.2.9.1", usable=False)
        key = f"study:{uid_hash(ds.StudyInstanceUID)}"
        assert spool.files(key) == [] and list(spool.other_series(key)) == [uid_hash("1.2.9")]
        assert spool.pending() == [key]  # a study of nothing usable is still looked at (and failed)

    def test_rerun_request_is_taken_once(self, tmp_path, study):
        spool = Spool(tmp_path)
        key = _spool_study(spool, study["t1"][:1])
        spool.request_rerun(key.partition(":")[2])
        assert spool.take_reruns() == [key] and spool.take_reruns() == []
        with pytest.raises(FileNotFoundError, match="no study"):
            spool.request_rerun("ab" * 8)

    def test_commit_outbox_once(self, tmp_path):
        spool = Spool(tmp_path)
        first = spool.commit_outbox("job", {"a.dcm": b"1"}, {"attempts": 0})
        again = spool.commit_outbox("job", {"a.dcm": b"2"}, None)
        assert first == again and (first / "a.dcm").read_bytes() == b"1"
        assert [f.name for f, _ in spool.deliveries()] == ["job"]


class TestAudit:
    def test_appends_json_lines_and_refuses_other_fields(self, tmp_path):
        log = AuditLog(tmp_path / "a.jsonl")
        log.record("x", study="ab", outcome="ok")
        log.record("y", job="j")
        assert [r["event"] for r in read_audit(tmp_path / "a.jsonl")] == ["x", "y"]
        with pytest.raises(ValueError, match="not allowed"):
            log.record("z", patient_name="x")


class TestCheckInstance:
    def test_accepts_an_mr_image(self, study):
        f = study["flair"][0]
        ds = pydicom.dcmread(f)
        assert check_instance(f.read_bytes()).sop == ds.SOPInstanceUID

    def test_truncated_pixel_data(self, study):
        with pytest.raises(InstanceProblem, match="truncated") as info:
            check_instance(_truncated(study["t1"][0]))
        assert info.value.status == STATUS_DATASET_MISMATCH

    def test_garbage(self):
        with pytest.raises(InstanceProblem) as info:
            check_instance(b"\0" * 128 + b"DICM" + b"\xff" * 40)
        assert info.value.status in (STATUS_CANNOT_UNDERSTAND, STATUS_DATASET_MISMATCH)

    @pytest.mark.parametrize("name,modality", [("CT_small.dcm", "CT"), ("MR_small.dcm", "MR")])
    def test_other_modalities_are_kept_aside(self, name, modality):
        from pydicom.data import get_testdata_file

        ids = check_instance(open(get_testdata_file(name), "rb").read(), job_modalities=("XA",))
        assert not ids.usable and ids.modality == modality

    def test_a_segmentation_is_kept_aside_without_image_checks(self, tmp_path, study):
        ds = pydicom.dcmread(study["t1"][0])
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
        ds.Modality = "SEG"
        del ds.PixelData
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        ids = check_instance(buf.getvalue())
        assert not ids.usable and ids.sop == ds.SOPInstanceUID

    def test_mismatching_request(self, study):
        with pytest.raises(InstanceProblem, match="differs"):
            check_instance(study["t1"][0].read_bytes(), sop_instance="1.2.3")


class TestSendFiles:
    def test_unknown_called_ae_is_a_permanent_refusal(self, tmp_path):
        from edge_infer.node.sender import send_files

        scp = pynetdicom.AE(ae_title="REALPACS")
        scp.require_called_aet = True
        scp.add_supported_context("1.2.840.10008.5.1.4.1.1.66.4")
        port = free_port()
        server = scp.start_server((LOOPBACK, port), block=False)
        try:
            cfg = load_config(None, spool=str(tmp_path))
            outcome = send_files([], Destination("WRONGAE", LOOPBACK, port), cfg)
        finally:
            server.shutdown()
        assert outcome.permanent and "called AE title not recognised" in outcome.error

    def test_nobody_listening_is_transient(self, tmp_path):
        from edge_infer.node.sender import send_files

        outcome = send_files([], Destination("X", LOOPBACK, free_port()), load_config(None, spool=str(tmp_path)))
        assert outcome and not outcome.permanent and "unreachable" in outcome.error


class TestSender:
    """Permanent refusals back off long and are flagged; a restart tries every delivery at once."""

    def test_permanent_refusal_then_corrected_destination_at_restart(self, tmp_path):
        import time

        from edge_infer.node.sender import Sender

        scp = pynetdicom.AE(ae_title="REALPACS")
        scp.require_called_aet = True
        scp.add_supported_context("1.2.840.10008.5.1.4.1.1.66.4", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        stored = []
        port = free_port()
        server = scp.start_server((LOOPBACK, port), block=False, evt_handlers=[
            (pynetdicom.evt.EVT_C_STORE, lambda event: stored.append(event.request.AffectedSOPInstanceUID) or 0)])
        try:
            spool = Spool(tmp_path / "spool")
            spool.commit_outbox("job1", {"seg.dcm": fake_seg_bytes()}, {"attempts": 0, "next_try": 0.0})
            wrong = load_config(None, spool=str(spool.root), destination=f"WRONGAE@{LOOPBACK}:{port}")
            sender = Sender(wrong, spool, AuditLog(spool.audit_path))
            assert sender.deliver_due() == 0 and "called AE title not recognised" in sender.permanent_error
            [(_, state)] = list(spool.deliveries())
            assert state["next_try"] > time.time() + 3000  # retry_permanent, not the doubling backoff
            fixed = load_config(None, spool=str(spool.root), destination=f"REALPACS@{LOOPBACK}:{port}")
            restarted = Sender(fixed, spool, AuditLog(spool.audit_path))
            stop = threading.Event()
            stop.set()  # run_forever's first pass only: the one at start
            restarted.run_forever(stop)
            assert len(stored) == 1 and list(spool.deliveries()) == [] and not restarted.permanent_error
        finally:
            server.shutdown()
        events = [(r["event"], r.get("outcome")) for r in read_audit(spool.audit_path)]
        assert events == [("send_failed", "permanent"), ("result_sent", "ok")]


class TestHealth:
    """`/healthz`, `/readyz` (503 with the reasons) and `/metrics` of a node not yet ready."""

    def _get(self, port: int, path: str):
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}{path}", timeout=10) as rsp:
                return rsp.status, rsp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def test_routes(self, tmp_path, loaded):
        from edge_infer.node.health import start_health
        from edge_infer.node.service import Node

        cfg = load_config(None, spool=str(tmp_path / "spool"), min_free_mb=10**9)
        node = Node(cfg, Spool(cfg.spool), None)
        port = free_port()
        server = start_health(LOOPBACK, port, node.readiness, node.metrics)
        try:
            assert self._get(port, "/healthz") == (200, "ok\n")
            code, body = self._get(port, "/readyz")
            assert code == 503 and "not listening yet" in body and "model loading" in body and "min_free_mb" in body
            node.listening.set()
            node.model_ready(loaded)
            node.metrics.instance("input")
            node.metrics.job("ok", 1.5)
            code, body = self._get(port, "/readyz")
            assert code == 503 and body.strip().splitlines() == [body.strip()]  # only the disk watermark left
            code, text = self._get(port, "/metrics")
            assert code == 200 and 'edge_infer_instances_received_total{kind="input"} 1.0' in text
            assert 'edge_infer_job_seconds_count{outcome="ok"} 1.0' in text
            assert f'sha256="{loaded.artifact.sha256}"' in text and "edge_infer_spool_bytes" in text
            assert self._get(port, "/other")[0] == 404
        finally:
            server.shutdown()


class TestStowReceiver:
    """STOW-RS into the spool, with dicomweb-client as the client; malformed requests refused."""

    @pytest.fixture
    def stow(self, tmp_path):
        from edge_infer.node.scp import StoreHandler
        from edge_infer.node.stow import start_stow

        spool = Spool(tmp_path / "spool")
        audit = AuditLog(spool.audit_path)
        arrivals = Arrivals()
        port = free_port()
        server = start_stow(LOOPBACK, port, StoreHandler(spool, audit, arrivals.mark).store, audit, max_mb=5)
        yield f"http://{LOOPBACK}:{port}", spool, arrivals
        server.shutdown()

    def test_stores_what_dicomweb_client_sends(self, stow, study):
        from dicomweb_client.api import DICOMwebClient

        url, spool, arrivals = stow
        files = study["t1"][:3]
        DICOMwebClient(url=url).store_instances([pydicom.dcmread(p) for p in files])
        assert len(list(spool.studies.rglob("*.dcm"))) == 3 and len(arrivals) == 1

    def test_a_bad_instance_is_listed_as_failed(self, stow, study):
        import requests
        from dicomweb_client.api import DICOMwebClient

        url, spool, _ = stow
        bad = pydicom.dcmread(io.BytesIO(_truncated(study["t2"][0])))
        with pytest.raises(requests.HTTPError, match="409"):
            DICOMwebClient(url=url).store_instances([bad])
        assert list(spool.quarantine_dir.glob("*.dcm"))

    @pytest.mark.parametrize("ctype,body,code,line", [
        ('multipart/related; type="application/dicom"; boundary=xyz', b"garbage", 400, "no part|malformed"),
        ("application/json", b"{}", 415, "must be multipart/related"),
        ('multipart/related; type="application/dicom"; boundary=xyz', b"x" * (6 * 2**20), 413, "stow_max_mb"),
    ])
    def test_malformed_requests_get_one_line(self, stow, ctype, body, code, line):
        import re
        import requests

        url, spool, _ = stow
        rsp = requests.post(f"{url}/studies", data=body, headers={"Content-Type": ctype}, timeout=30)
        assert rsp.status_code == code and re.search(line, rsp.text) and rsp.text.count("\n") == 1
        assert [r["event"] for r in read_audit(spool.audit_path)] == ["stow_refused"]


class TestBackoff:
    def test_doubles_and_caps(self):
        assert [backoff(n, 2.0, 10.0) for n in range(6)] == [0.0, 2.0, 4.0, 8.0, 10.0, 10.0]


# -- worker and watcher, in process ------------------------------------------------------------
class TestWorker:
    def _worker(self, tmp_path, loaded):
        spool = Spool(tmp_path / "spool")
        cfg = load_config(None, spool=str(spool.root), idle_seconds=0.01)
        arrivals = Arrivals()
        return Worker(cfg, spool, AuditLog(spool.audit_path), arrivals, loaded), spool, arrivals

    def test_study_gives_one_seg(self, tmp_path, loaded, study):
        worker, spool, _ = self._worker(tmp_path, loaded)
        key = _spool_study(spool, study_files(study))
        assert worker.run_job(key) == "ok"
        assert worker.run_job(key) == "unchanged"
        [job] = list(spool.outbox.iterdir())
        segs = list(job.glob("*_seg.dcm"))
        assert len(segs) == 1 and pydicom.dcmread(segs[0]).Modality == "SEG"
        events = [r["event"] for r in read_audit(spool.audit_path)]
        assert events.count("series_received") == 4 and events.count("job_done") == 1
        assert spool.pending() == []

    def test_workers_give_the_same_seg(self, tmp_path, loaded, study, model2d):
        """The node runs 2D models with concurrent backend calls (one per thread) like
        `edge-infer run`: the same label map as one call at a time, and the report says so."""
        from edge_infer.node.worker import segment_job
        from edge_infer.options import ModelChoice
        from edge_infer.planning import load_for_run

        spool = Spool(tmp_path / "spool")
        key = _spool_study(spool, study_files(study))
        cfg = load_config(None, spool=str(spool.root), nifti=True)
        two, workers = load_for_run(ModelChoice(model=model2d, threads=2))
        assert workers == 2
        a = segment_job(spool.job_dir(key) / "data", loaded, cfg, dicom=True, name="a")
        b = segment_job(spool.job_dir(key) / "data", two, cfg, dicom=True, name="a", workers=workers)
        assert a.files["a_mask.nii.gz"] == b.files["a_mask.nii.gz"]
        assert (a.report["plan"]["workers"], b.report["plan"]["workers"]) == (1, 2)

    def test_restart_resumes_a_job_killed_while_processing(self, tmp_path, loaded, study):
        worker, spool, arrivals = self._worker(tmp_path, loaded)
        key = _spool_study(spool, study_files(study))
        spool.write_state(key, status="processing", fingerprint=spool.fingerprint(key))
        assert worker.recover() == [key] and len(arrivals) == 1
        assert worker.run_job(key) == "ok"

    def test_nothing_usable_goes_to_failed_with_one_line(self, tmp_path, loaded):
        from pydicom.data import get_testdata_file

        worker, spool, _ = self._worker(tmp_path, loaded)
        ct = get_testdata_file("CT_small.dcm")
        ds = pydicom.dcmread(ct, stop_before_pixels=True)
        spool.store_instance(open(ct, "rb").read(), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                             usable=False)
        key = f"study:{uid_hash(ds.StudyInstanceUID)}"
        assert worker.run_job(key) == "unusable"
        [failed] = list(spool.failed.iterdir())
        error = (failed / "error.txt").read_text()
        assert error.count("\n") == 1 and "no series the model can use" in error and "CT Image Storage x1" in error
        assert [r["event"] for r in read_audit(spool.audit_path)] == ["study_unusable"]

    def test_segmented_study_is_not_rerun_for_kept_aside_instances_but_on_request(self, tmp_path, loaded, study):
        worker, spool, _ = self._worker(tmp_path, loaded)
        key = _spool_study(spool, study_files(study))
        assert worker.run_job(key) == "ok"
        ds = pydicom.dcmread(study["t1"][0], stop_before_pixels=True)
        spool.store_instance(b"seg", ds.StudyInstanceUID, "1.2.9", "1.2.9.1", usable=False)
        assert worker.run_job(key) == "unchanged"
        spool.request_rerun(key.partition(":")[2])
        assert worker.take_reruns() == [key] and worker.run_job(key) == "ok"
        assert sorted(p.name[-3:] for p in spool.outbox.iterdir())[0] == "-r1"
        events = [r["event"] for r in read_audit(spool.audit_path)]
        assert events.count("job_done") == 2 and "resend_ignored" in events and "rerun_requested" in events

    def test_unmappable_study_goes_to_failed_with_the_series_found(self, tmp_path, loaded, study):
        worker, spool, _ = self._worker(tmp_path, loaded)
        key = _spool_study(spool, study["t1"] + study["t2"])
        assert worker.run_job(key) == "failed"
        [failed] = list(spool.failed.iterdir())
        error = (failed / "error.txt").read_text()
        assert "series found" in error and "AX T1" in error and "AX T2" in error
        assert not spool.job_dir(key).exists() and list(spool.outbox.iterdir()) == []


class TestWatcher:
    def test_dicom_and_nifti_drops(self, tmp_path, loaded, study, case_dir):
        drop = tmp_path / "drop"
        shutil.copytree(study["t1"][0].parent.parent, drop / "dicom")
        shutil.copytree(case_dir, drop / "case")
        (drop / "notes.txt").write_text("hello")
        (drop / "busy.nii.gz.part").write_bytes(b"x")
        spool = Spool(tmp_path / "spool")
        clock = [0.0]
        audit = AuditLog(spool.audit_path)
        arrivals = Arrivals(clock=lambda: clock[0])
        watcher = Watcher(drop, spool, audit, arrivals, stable_seconds=5.0, clock=lambda: clock[0])
        assert watcher.scan_once() == []
        clock[0] = 10.0
        keys = set(watcher.scan_once())
        assert len(keys) == 2 and {k.split(":")[0] for k in keys} == {"study", "case"}
        assert sorted(p.name for p in drop.rglob("*") if p.is_file()) == ["busy.nii.gz.part"]
        assert len(list(spool.quarantine_dir.glob("*.dcm"))) == 1
        cfg = load_config(None, spool=str(spool.root))
        worker = Worker(cfg, spool, audit, arrivals, loaded)
        assert [worker.run_job(k) for k in sorted(keys)] == ["ok", "ok"]
        outputs = sorted(p.name for p in spool.outbox.rglob("*") if p.is_file())
        assert "case_mask.nii.gz" in outputs and any(n.endswith("_seg.dcm") for n in outputs)

    def test_case_key(self, tmp_path):
        assert case_key(tmp_path / "BraTS_001" / "x_t1.nii.gz", tmp_path) == "BraTS_001"
        assert case_key(tmp_path / "pat_t1ce.nii.gz", tmp_path) == "pat"
        assert case_key(tmp_path / "pat4d.nii.gz", tmp_path) == "pat4d"


# -- the real service with DCMTK peers ---------------------------------------------------------
@pytest.fixture
def node_run(tmp_path, model2d):
    """Start/kill helpers for nodes and destinations; everything started is stopped at teardown."""
    procs = []

    class Run:
        root = tmp_path
        spool = tmp_path / "spool"
        port = free_port()
        dest_port = free_port()
        dest_dir = tmp_path / "dest"

        def config(self, **kw):
            return write_config(tmp_path / "node.toml", self.spool, self.port, model2d, dest_port=self.dest_port, **kw)

        def node(self, command="serve", *args):
            log = tmp_path / f"node-{len(procs)}.log"
            p = start_node(command, tmp_path / "node.toml", log, *args)
            procs.append(p)
            if command == "serve":
                wait_listening(p, self.port)
            return p

        def destination(self):
            p = start_storescp(self.dest_port, self.dest_dir, tmp_path / f"storescp-{len(procs)}.log")
            procs.append(p)
            return p

        def logs(self):
            return sorted(tmp_path.glob("node-*.log"))

        def audit(self):
            return read_audit(self.spool / "audit.jsonl")

    yield Run()
    for p in procs:
        p.stop()


def _no_patient_data(run) -> None:
    text = text_of(run.logs() + report_and_log_files(run.spool))
    for marker in MARKERS:
        assert marker not in text, f"patient data {marker!r} leaked into logs, audit or reports"


def _scu(aet: str = "PYNETDICOM"):
    ae = pynetdicom.AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    return ae


@needs_dcmtk
@pytest.mark.slow
class TestServe:
    def test_receives_segments_and_sends_back_seg(self, node_run, study):
        run = node_run
        run.config()
        run.destination()
        node = run.node()
        out = storescu(run.port, study_files(study))
        assert out.returncode == 0, out.stderr
        segs = wait_until(lambda: received_segs(run.dest_dir), 90, "the SEG at the destination")
        [seg] = segs.values()
        source = pydicom.dcmread(study["t1"][0], stop_before_pixels=True)
        assert seg.StudyInstanceUID == source.StudyInstanceUID
        assert len(seg.ReferencedSeriesSequence) == 4
        # the sender audits the delivery after the destination has acknowledged it: wait for it
        wait_until(lambda: "result_sent" in [r["event"] for r in run.audit()], 60, "the result_sent audit line")
        events = [r["event"] for r in run.audit()]
        assert events.count("series_received") == 4 and events.count("job_done") == 1
        assert all(r["model_sha256"] for r in run.audit() if r["event"] in ("job_started", "job_done"))
        [sent] = wait_until(lambda: list((run.spool / "sent").iterdir()), 60, "the job in sent/")
        assert any(p.name.endswith("_report.json") for p in sent.iterdir())

        # an AE title not on the allow-list is rejected at association
        assert not echo_ok(run.port, aet="INTRUDER")
        assert storescu(run.port, study["t1"][:1], aet="INTRUDER").returncode != 0
        wait_until(lambda: any(r["event"] == "association_rejected" for r in run.audit()), 10, "the rejection audit")

        # a standard non-image class is accepted (kept aside), an unknown one is rejected and said so;
        # a truncated instance is refused and quarantined
        ae = _scu()
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.88.11")  # Basic Text SR
        ae.add_requested_context("1.2.3.4.5.6.7")                   # not a storage class we know
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")
        assoc = ae.associate(LOOPBACK, run.port, ae_title=NODE_AE)
        assert assoc.is_established
        try:
            accepted = {str(c.abstract_syntax) for c in assoc.accepted_contexts}
            assert "1.2.840.10008.5.1.4.1.1.88.11" in accepted and "1.2.3.4.5.6.7" not in accepted
            bad = pydicom.dcmread(io.BytesIO(_truncated(study["t2"][0])))
            status = assoc.send_c_store(bad)
            assert status.Status == STATUS_DATASET_MISMATCH
        finally:
            assoc.release()
        assert len(list((run.spool / "quarantine").glob("*.dcm"))) == 1
        rejected = [r for r in run.audit() if r["event"] == "context_rejected"]
        assert len(rejected) == 1 and "1.2.3.4.5.6.7" in rejected[0]["reason"]
        assert "1.2.3.4.5.6.7" in "".join(p.read_text() for p in run.logs())
        assert node.alive()
        _no_patient_data(run)

    @pytest.mark.parametrize("receivers", [1, 2])
    def test_concurrent_clients_store_every_instance_once(self, node_run, tmp_path, receivers):
        run = node_run
        run.config(idle=2.0, extra=f"receivers = {receivers}")
        run.destination()
        run.node()
        studies = [write_study(tmp_path / f"s{i}", seed=10 + i) for i in range(2)]
        files = [f for s in studies for f in study_files(s)]
        chunks = [files[i::4] for i in range(4)]
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda c: storescu(run.port, c), chunks))
        assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
        stored = list((run.spool / "studies").rglob("*.dcm"))
        assert len(stored) == len(files) == len({p.name for p in stored})
        wait_until(lambda: len(received_segs(run.dest_dir)) == 2, 120, "two SEGs at the destination")
        # sending everything again stores nothing new and makes no second result
        assert storescu(run.port, files).returncode == 0
        assert len(list((run.spool / "studies").rglob("*.dcm"))) == len(files)
        wait_until(lambda: sum(r["event"] == "job_done" for r in run.audit()) >= 2, 30, "the jobs")
        threading.Event().wait(4.0)  # two idle periods: a duplicate job would start now
        assert sum(r["event"] == "job_started" for r in run.audit()) == 2
        assert len(received_segs(run.dest_dir)) == 2
        _no_patient_data(run)

    def test_sigkill_while_receiving_and_processing(self, node_run, study):
        run = node_run
        run.config(idle=1.0)
        run.destination()
        files = study_files(study)
        node = run.node()
        assert storescu(run.port, files[: len(files) // 2]).returncode == 0
        node.kill()  # half of the study received
        node = run.node()
        assert storescu(run.port, files[len(files) // 2:]).returncode == 0
        wait_until(lambda: any(r["event"] == "job_started" for r in run.audit()), 60, "the job to start", step=0.02)
        node.kill()  # while processing (or just after: either way one result)
        assert not received_segs(run.dest_dir) or len(received_segs(run.dest_dir)) == 1
        run.node()
        wait_until(lambda: received_segs(run.dest_dir), 90, "the SEG after restart")
        threading.Event().wait(3.0)
        assert len(received_segs(run.dest_dir)) == 1
        jobs = list((run.spool / "outbox").iterdir()) + list((run.spool / "sent").iterdir())
        assert len(jobs) == 1
        assert len(list((run.spool / "studies").rglob("*.dcm"))) == len(files)

    def test_listens_fast_reports_health_refuses_on_low_disk_and_stops_cleanly(self, node_run, study):
        import time
        import urllib.error
        import urllib.request

        run = node_run
        health = free_port()
        stow_port = free_port()
        run.config(extra=f"health_port = {health}\nstop_timeout = 5\nstow_port = {stow_port}")
        t0 = time.monotonic()
        node = run.node()
        assert time.monotonic() - t0 < 5.0  # about 0.75 s measured: the model loads in the background

        def ready():
            try:
                return urllib.request.urlopen(f"http://{LOOPBACK}:{health}/readyz", timeout=5).status == 200
            except (urllib.error.URLError, OSError):
                return False

        wait_until(ready, 60, "/readyz to say ready")
        from dicomweb_client.api import DICOMwebClient

        DICOMwebClient(url=f"http://{LOOPBACK}:{stow_port}/dicom-web").store_instances(
            [pydicom.dcmread(p) for p in study["t1"]])  # one series by STOW-RS, the rest by C-STORE
        assert storescu(run.port, study_files(study)[len(study["t1"]):]).returncode == 0
        t0 = time.monotonic()
        assert node.stop(timeout=30) == 0 and time.monotonic() - t0 < 15
        assert run.audit()[-1]["event"] == "node_stopped"
        assert len(list((run.spool / "studies").rglob("*.dcm"))) == len(study_files(study))

        # below the free-disk watermark: connections are refused with one line, readiness says why
        run.config(extra=f"health_port = {health}\nmin_free_mb = 1000000000")
        node = start_node("serve", run.root / "node.toml", run.root / "node-lowdisk.log")
        try:
            wait_until(lambda: not echo_ok(run.port) and "refused a connection" in node.text(), 60,
                       "a refused connection", step=0.3)
            with pytest.raises(urllib.error.HTTPError, match="503"):
                urllib.request.urlopen(f"http://{LOOPBACK}:{health}/readyz", timeout=5)
        finally:
            node.stop()
        assert any("min_free_mb" in r.get("reason", "") for r in run.audit() if r["event"] == "association_rejected")
        _no_patient_data(run)

    def test_destination_down_then_up(self, node_run, study):
        run = node_run
        run.config()
        run.node()
        assert storescu(run.port, study_files(study)).returncode == 0
        wait_until(lambda: any(r["event"] == "send_failed" for r in run.audit()), 90, "a failed send")
        assert list((run.spool / "outbox").iterdir())
        # receiving goes on while the destination is down
        assert echo_ok(run.port)
        run.destination()
        wait_until(lambda: received_segs(run.dest_dir), 60, "the SEG once the destination is up")
        wait_until(lambda: not list((run.spool / "outbox").iterdir()), 10, "the outbox to empty")
        assert len(list((run.spool / "sent").iterdir())) == 1


@needs_dcmtk
@pytest.mark.slow
def test_watch_folder_processes_dropped_dicom(node_run, study):
    run = node_run
    drop = run.root / "drop"
    drop.mkdir()
    run.config(idle=0.5)
    run.destination()
    node = run.node("watch", str(drop))
    shutil.copytree(study["t1"][0].parent.parent, drop / "study")
    wait_until(lambda: received_segs(run.dest_dir), 90, "the SEG from the watched folder")
    assert node.alive()
    assert not [p for p in drop.rglob("*") if p.is_file()]
    _no_patient_data(run)


class TestCommands:
    def test_help_has_examples(self):
        from click.testing import CliRunner

        from edge_infer.cli_node import main

        for name in ("serve", "watch", "rerun"):
            out = CliRunner().invoke(main, [name, "--help"])
            assert out.exit_code == 0 and "Example:" in out.output and f"edge-infer {name}" in out.output

    def test_config_error_is_one_line_exit_2(self, tmp_path):
        from click.testing import CliRunner

        from edge_infer.cli_node import main

        out = CliRunner().invoke(main, ["serve", "--port", "11112"])
        assert out.exit_code == 2 and "no spool folder" in out.output

    def test_rerun_asks_the_node_or_says_what_to_give(self, tmp_path, study):
        from click.testing import CliRunner

        from edge_infer.cli_node import main

        spool = Spool(tmp_path / "spool")
        key = _spool_study(spool, study["t1"][:1])
        out = CliRunner().invoke(main, ["rerun", "--spool", str(spool.root), key.partition(":")[2]])
        assert out.exit_code == 0 and spool.take_reruns() == [key]
        out = CliRunner().invoke(main, ["rerun", "--spool", str(spool.root), "../etc"])
        assert out.exit_code == 1 and out.output.count("\n") == 1 and "study hash from the audit log" in out.output


class TestProbeModel:
    """The first load and run of a model happen in a child process."""

    def test_good_model_passes(self, model2d):
        from edge_infer.node.probe import probe_model

        probe_model(str(model2d), "onnx", 1)

    def test_failing_model_is_refused(self, tmp_path):
        from edge_infer.errors import NodeError
        from edge_infer.node.probe import probe_model
        from model_factory import write_model

        folder = write_model(tmp_path / "m")
        (folder / "model.onnx").write_bytes(b"changed")
        with pytest.raises(NodeError, match="failed its probe run: .*sha256"):
            probe_model(str(folder))

    def test_backend_crash_is_refused_and_we_survive(self, model2d, tmp_path):
        """A child that dies by SIGSEGV (as a crashing runtime does) is reported, not fatal."""
        from edge_infer.errors import NodeError
        from edge_infer.node.probe import probe_model

        crasher = tmp_path / "python"
        crasher.write_text("#!/bin/sh\nkill -SEGV $$\n")
        crasher.chmod(0o755)
        with pytest.raises(NodeError, match=r"crashed its backend in a probe process \(SIGSEGV\)"):
            probe_model(str(model2d), python=[str(crasher)])


class TestNodeOpen:
    """`Node.open(config)`: the constructor only wires; opening cleans, loads and starts; leaving stops."""

    def test_constructor_has_no_side_effects(self, tmp_path, loaded):
        from edge_infer.node.service import Node

        spool = Spool(tmp_path / "spool")
        (spool.tmp / "partial").write_bytes(b"x")
        node = Node(load_config(None, spool=str(spool.root)), spool, loaded)
        assert (spool.tmp / "partial").exists() and not node._threads and not spool.audit_path.exists()

    def test_open_starts_and_leaving_stops(self, tmp_path, loaded):
        from edge_infer.node.service import Node

        cfg = load_config(None, spool=str(tmp_path / "spool"))
        Spool(cfg.spool)
        (Path(cfg.spool) / "tmp" / "partial").write_bytes(b"x")
        with Node.open(cfg, loaded=loaded) as node:
            assert all(t.is_alive() for t in node._threads) and len(node._threads) == 2
            assert not (Path(cfg.spool) / "tmp" / "partial").exists()
        assert node.stop.is_set() and not any(t.is_alive() for t in node._threads)
        events = [e["event"] for e in read_audit(Path(cfg.spool) / "audit.jsonl")]
        assert events == ["node_started", "node_stopped"]
