"""The node against a real PACS: Debian's Orthanc, started by the test in a loopback-only
network namespace with the node (issue 16, item 9). Slow: about 30 s."""

from __future__ import annotations

import io
import threading

import pydicom
import pytest

from node_helpers import MARKERS, Proc, node_env, report_and_log_files, study_files, text_of, wait_until, write_config, write_study
from pacs_helpers import DICOM_PORT, NODE_PORT, STOW_URL, USER, Namespace, Orthanc, namespace_problem

hd = pytest.importorskip("highdicom")
pytest.importorskip("pynetdicom")

from edge_infer.node.audit import read_audit  # noqa: E402

_PROBLEM = namespace_problem()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(bool(_PROBLEM), reason=_PROBLEM or "ok")]


@pytest.fixture
def pacs(request, tmp_path, model2d):
    """Orthanc and the node in one namespace; both stopped and the namespace removed at the end.

    The node sends to Orthanc with C-STORE, or by STOW-RS (``indirect`` parameter "dicomweb",
    basic authentication from a credentials file)."""
    import sys

    web = getattr(request, "param", "dimse") == "dicomweb"
    extra = ""
    if web:
        (tmp_path / "pacs.cred").write_text(":".join(USER) + "\n")
        extra = (f'[destination]\nurl = "{STOW_URL}"\nauth = "basic"\n'
                 f'credentials_file = "{tmp_path / "pacs.cred"}"')

    ns = Namespace()
    procs = []
    try:
        orthanc = Orthanc(ns, tmp_path / "orthanc")
        procs.append(orthanc.proc)
        wait_until(orthanc.alive, 60, "Orthanc's REST API")
        config = write_config(tmp_path / "node.toml", tmp_path / "spool", NODE_PORT, model2d,
                              dest_port=None if web else DICOM_PORT, idle=1.0, allowed=("ORTHANC",), extra=extra)
        node = Proc([*ns.prefix(), sys.executable, "-m", "edge_infer.cli_node", "serve", "--config", str(config)],
                    tmp_path / "node.log", node_env())
        procs.append(node)
        wait_until(lambda: _echo(orthanc), 60, "the node to answer Orthanc's C-ECHO", step=0.3)
        yield orthanc, node, tmp_path
    finally:
        for p in reversed(procs):
            p.stop()
        ns.close()


def _echo(orthanc: Orthanc) -> bool:
    [(code, _)] = orthanc.call("POST", "/modalities/edge/echo", [b"{}"])
    return code == 200


def _other_instance(study_file, tmp_path):
    """pydicom's CT_small moved into our study (a CT in an MR study: kept aside, no job)."""
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    mr = pydicom.dcmread(study_file, stop_before_pixels=True)
    ct.StudyInstanceUID, ct.PatientID, ct.PatientName = mr.StudyInstanceUID, mr.PatientID, mr.PatientName
    ct.SeriesInstanceUID, ct.SOPInstanceUID = generate_uid(), generate_uid()
    ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
    path = tmp_path / "ct.dcm"
    ct.save_as(path)
    return path


def test_round_trip_with_orthanc(pacs):
    orthanc, node, tmp_path = pacs
    study = write_study(tmp_path / "study", seed=3)
    files = study_files(study)
    sid = orthanc.upload(files)

    # Orthanc's default (non-permissive) store job sends the study; the SEG comes back into it
    job = orthanc.store_job(sid)
    assert job["State"] == "Success", job
    segs = wait_until(lambda: [s for s, m in orthanc.series_modalities(sid).items() if m == "SEG"], 120,
                      "the SEG in Orthanc's study")
    seg = hd.seg.segread(io.BytesIO(orthanc.instance_file(segs[0])))
    source = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert len(seg.ReferencedSeriesSequence) == 4
    assert seg.ContributingEquipmentSequence[0].DeviceSerialNumber == \
        [r for r in read_audit(tmp_path / "spool" / "audit.jsonl") if r["event"] == "job_done"][0]["model_sha256"]

    # the whole study again, now holding the SEG and a CT: accepted, kept aside, no second job
    orthanc.upload([_other_instance(files[0], tmp_path)])
    assert set(orthanc.series_modalities(sid).values()) == {"MR", "SEG", "CT"}
    again = orthanc.store_job(sid)
    assert again["State"] == "Success", again
    audit = lambda: read_audit(tmp_path / "spool" / "audit.jsonl")  # noqa: E731
    wait_until(lambda: any(r["event"] == "resend_ignored" for r in audit()), 30, "the ignored resend in the audit")
    threading.Event().wait(3.0)  # three idle periods: a second job would have started
    events = [r["event"] for r in audit()]
    assert events.count("job_started") == 1
    assert events.count("series_kept_aside") == 2  # the SEG and the CT series
    assert len([m for m in orthanc.series_modalities(sid).values() if m == "SEG"]) == 1
    assert node.alive()
    text = text_of([tmp_path / "node.log", *report_and_log_files(tmp_path / "spool")])
    assert not any(marker in text for marker in MARKERS)


@pytest.mark.parametrize("pacs", ["dicomweb"], indirect=True)
def test_seg_back_by_stow_rs_with_basic_auth(pacs):
    orthanc, node, tmp_path = pacs
    files = study_files(write_study(tmp_path / "study", seed=4))
    sid = orthanc.upload(files)
    assert orthanc.store_job(sid)["State"] == "Success"
    segs = wait_until(lambda: [s for s, m in orthanc.series_modalities(sid).items() if m == "SEG"], 120,
                      "the SEG stored by STOW-RS")
    seg = hd.seg.segread(io.BytesIO(orthanc.instance_file(segs[0])))
    assert len(seg.ReferencedSeriesSequence) == 4
    sent = wait_until(lambda: [r for r in read_audit(tmp_path / "spool" / "audit.jsonl") if r["event"] == "result_sent"],
                      30, "the result_sent record")
    assert sent[0]["destination"].startswith("STOW-RS http://127.0.0.1")
    assert USER[1] not in text_of([tmp_path / "node.log", *report_and_log_files(tmp_path / "spool")])
