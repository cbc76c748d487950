"""Tests of the node's receiver processes (``receivers`` > 1) and of the Part 10 encoding of a
received data set: real pynetdicom associations on 127.0.0.1, a real receiver process."""

from __future__ import annotations

import collections
import io
import os
import signal
import threading
import time
from pathlib import Path

import pydicom
import pytest

from node_helpers import LOOPBACK, NODE_AE, free_port, study_files, wait_until, write_study

pynetdicom = pytest.importorskip("pynetdicom")

from pynetdicom import evt  # noqa: E402
from pynetdicom.dimse_primitives import C_STORE  # noqa: E402
from pynetdicom.dsutils import encode  # noqa: E402
from pynetdicom.presentation import build_context  # noqa: E402

from edge_infer.node.audit import AuditLog, read_audit  # noqa: E402
from edge_infer.node.config import ConfigError, NodeConfig, load_config  # noqa: E402
from edge_infer.node.part10 import PREAMBLE, encoded_instance, file_meta  # noqa: E402
from edge_infer.node.receivers import Receivers  # noqa: E402
from edge_infer.node.scp import StoreHandler  # noqa: E402
from edge_infer.node.server import start_server, stop_associations  # noqa: E402
from edge_infer.node.spool import Spool  # noqa: E402

SCU_AE = "PYNETDICOM"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return study_files(write_study(tmp_path_factory.mktemp("study"), seed=3))


def _event(ds: pydicom.Dataset, syntax: str, sop_instance: str | None = None):
    """A C-STORE event as pynetdicom hands it to the handler (request, accepted context)."""
    req = C_STORE()
    req.AffectedSOPClassUID = ds.SOPClassUID
    req.AffectedSOPInstanceUID = sop_instance or ds.SOPInstanceUID
    implicit = syntax == "1.2.840.10008.1.2"
    req.DataSet = io.BytesIO(encode(ds, implicit, True))
    cx = build_context(ds.SOPClassUID, syntax)
    cx.context_id = 1
    return evt.Event(None, evt.EVT_C_STORE, {"request": req, "context": cx.as_tuple})


class TestEncodedInstance:
    @pytest.mark.parametrize("syntax", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    def test_same_bytes_as_pynetdicom(self, study, syntax):
        ds = pydicom.dcmread(study[0])
        event = _event(ds, syntax)
        assert encoded_instance(event) == event.encoded_dataset(include_meta=True)

    def test_odd_length_uid_is_padded_like_pynetdicom(self, study):
        ds = pydicom.dcmread(study[0])
        ds.SOPInstanceUID = "1.2.3.456"
        event = _event(ds, "1.2.840.10008.1.2.1")
        data = encoded_instance(event)
        assert data == event.encoded_dataset(include_meta=True)
        assert pydicom.dcmread(io.BytesIO(data)).file_meta.MediaStorageSOPInstanceUID == "1.2.3.456"


class TestFileMeta:
    def test_parses_back(self):
        raw = file_meta("1.2.840.10008.5.1.4.1.1.4", "1.2.3", "1.2.840.10008.1.2.1", "1.2.3.4", "EDGE")
        meta = pydicom.dcmread(io.BytesIO(PREAMBLE + raw)).file_meta  # a file with an empty data set
        assert meta.MediaStorageSOPInstanceUID == "1.2.3" and meta.ImplementationVersionName == "EDGE"
        assert meta.FileMetaInformationGroupLength == len(raw) - 12

    @pytest.mark.parametrize("uid, match", [("1." * 40, "UI value of 80"), ("1.2.\u00e9", "ascii")])
    def test_refuses_what_cannot_be_encoded(self, uid, match):
        with pytest.raises(ValueError, match=match):
            file_meta("1.2.840.10008.5.1.4.1.1.4", uid, "1.2.840.10008.1.2.1", "1.2.3.4")


class TestConfigReceivers:
    def test_default_and_key(self, tmp_path):
        assert load_config(spool=tmp_path).receivers == 1
        assert load_config(spool=tmp_path, receivers=3).receivers == 3

    @pytest.mark.parametrize("value, match", [(0, "receivers"), (17, "more than 16")])
    def test_refused(self, tmp_path, value, match):
        with pytest.raises(ConfigError, match=match):
            load_config(spool=tmp_path, receivers=value)


class _Node:
    """An SCP with receiver processes, in this process; counts arrivals by who stored them."""

    def __init__(self, tmp: Path, receivers: int, max_associations: int = 8) -> None:
        self.config = NodeConfig(spool=tmp / "spool", port=free_port(), ae_title=NODE_AE, bind=LOOPBACK,
                                 receivers=receivers, max_associations=max_associations, stop_timeout=5)
        self.spool = Spool(self.config.spool)
        self.audit = AuditLog(self.spool.audit_path)
        self.arrivals: collections.Counter = collections.Counter()
        lock = threading.Lock()

        def mark(who):
            def on_stored(key):
                with lock:
                    self.arrivals[who] += 1
            return on_stored

        handler = StoreHandler(self.spool, self.audit, mark("node"), self.config)
        self.metrics = _Counted()
        self.receivers = Receivers(self.config, receivers, mark("receiver"), self.metrics,
                                   kept_aside=handler.series_kept_aside)
        assert self.receivers.wait_ready(60), "the receiver process did not start"
        self.server = start_server(self.config, handler, self.audit, None, self.receivers)

    def associate(self):
        ae = pynetdicom.AE(ae_title=SCU_AE)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1")
        return ae.associate(LOOPBACK, self.config.port, ae_title=NODE_AE)

    def stop(self) -> None:
        self.server.shutdown()
        self.receivers.stop(5)
        stop_associations(self.server, time.monotonic() + 5, self.audit)


class _Counted:
    """What the node's metrics were told (the calls :class:`~edge_infer.node.metrics.Metrics` takes)."""

    def __init__(self) -> None:
        self.calls: collections.Counter = collections.Counter()

    def instance(self, kind: str, refused: bool = False) -> None:
        self.calls[("instance", kind, refused)] += 1

    def association_refused(self, reason: str) -> None:
        self.calls[("association_refused", reason)] += 1


@pytest.fixture
def node(tmp_path):
    nodes = []

    def make(**kw):
        nodes.append(_Node(tmp_path, **kw))
        return nodes[-1]

    yield make
    for n in nodes:
        n.stop()


def _store_all(assoc, files) -> list[int]:
    return [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in files]


class TestReceivers:
    def test_second_open_connection_goes_to_the_receiver_process(self, node, study):
        n = node(receivers=2)
        first, second = n.associate(), n.associate()
        assert first.is_established and second.is_established
        half = len(study) // 2
        assert _store_all(first, study[:half]) == [0] * half
        assert _store_all(second, study[half:]) == [0] * (len(study) - half)
        first.release()
        second.release()
        wait_until(lambda: sum(n.arrivals.values()) == len(study), 10, "every arrival reported")
        assert n.arrivals == {"node": half, "receiver": len(study) - half}
        # the receiver's counts, forwarded (each after its arrival: wait for the last)
        wait_until(lambda: n.metrics.calls == {("instance", "input", False): len(study) - half}, 10,
                   f"the receiver's instance counts, {n.metrics.calls}")
        assert len(list((n.config.spool / "studies").rglob("*.dcm"))) == len(study)

    def test_a_series_kept_aside_through_two_processes_is_recorded_once(self, node, study, caplog):
        n = node(receivers=2)
        first, second = n.associate(), n.associate()  # the second is served by the receiver process
        series = pydicom.uid.generate_uid()
        kept = []
        for path in study[:4]:  # one series of another modality: kept aside, not input
            ds = pydicom.dcmread(path)
            ds.Modality, ds.SeriesInstanceUID = "OT", series
            kept.append(ds)
        with caplog.at_level("INFO", logger="edge_infer.node"):
            assert [int(first.send_c_store(ds).Status) for ds in kept[:2]] == [0, 0]
            assert [int(second.send_c_store(ds).Status) for ds in kept[2:]] == [0, 0]
            first.release()
            second.release()
            wait_until(lambda: sum(n.arrivals.values()) == 4, 10, "every arrival reported")
            assert n.arrivals == {"node": 2, "receiver": 2}
            wait_until(lambda: n.metrics.calls.get(("instance", "kept_aside", False)) == 2, 10,
                       "the receiver's counts")
        records = [r for r in read_audit(n.spool.audit_path) if r["event"] == "series_kept_aside"]
        assert len(records) == 1 and "modality OT: starts no job" in records[0]["reason"]
        assert sum("kept aside, not input" in r.getMessage() for r in caplog.records) == 1
        assert len(list((n.config.spool / "studies").rglob("other/*/*.dcm"))) == 4

    def test_a_closed_connection_frees_its_receiver(self, node, study):
        n = node(receivers=2)
        for _ in range(2):  # one at a time: each is served by the node's own process
            assoc = n.associate()
            assert _store_all(assoc, study[:1]) == [0]
            assoc.release()
            wait_until(lambda: n.receivers.here == 0, 10, "the connection counted closed")
        assert n.arrivals == {"node": 2}

    def test_max_associations_holds_across_processes(self, node):
        n = node(receivers=2, max_associations=2)
        first, second = n.associate(), n.associate()
        third = n.associate()
        assert first.is_established and second.is_established
        assert third.is_rejected
        assert [c.open for c in n.receivers.children] == [1]
        rejected = [r for r in read_audit(n.spool.audit_path) if r["event"] == "association_rejected"]
        assert rejected and "max_associations (2)" in rejected[0]["reason"]
        first.release()
        second.release()

    def test_a_killed_receiver_is_started_again(self, node, study):
        n = node(receivers=2)
        old = n.receivers.children[0]
        os.kill(old.proc.pid, signal.SIGKILL)
        wait_until(lambda: n.receivers.children[0] is not old and n.receivers.children[0].ready.is_set(), 30,
                   "a new receiver process")
        first, second = n.associate(), n.associate()
        assert _store_all(second, study[:2]) == [0, 0]
        first.release()
        second.release()
        wait_until(lambda: n.arrivals["receiver"] == 2, 10, "the new receiver's arrivals")

    def test_stop_finishes_and_the_processes_exit(self, node):
        n = node(receivers=3)
        children = list(n.receivers.children)
        n.server.shutdown()
        n.receivers.stop(5)
        assert [c.proc.returncode for c in children] == [0, 0]
        n.server = _Stopped()


class _Stopped:
    """A server already shut down (the fixture's stop then has nothing to stop)."""

    active_associations: list = []

    def shutdown(self) -> None:
        pass


class TestQuickCopyContexts:
    def test_a_deep_copy_with_the_same_values_and_its_own_lists(self):
        import copy

        from edge_infer.node.server import make_ae, quick_copy_contexts

        ae = make_ae(NodeConfig(spool=Path("unused")))
        original = ae.supported_contexts
        quick = quick_copy_contexts(original)
        copied = copy.deepcopy(quick)
        assert len(copied) == len(original) > 100
        for a, b in zip(original, copied, strict=True):
            assert (a.abstract_syntax, a.transfer_syntax, a.context_id, a.scu_role, a.scp_role, a.as_scu, a.as_scp) == \
                   (b.abstract_syntax, b.transfer_syntax, b.context_id, b.scu_role, b.scp_role, b.as_scu, b.as_scp)
        copied[0].add_transfer_syntax("1.2.840.10008.1.2.4.100")  # the copy's list is its own
        assert "1.2.840.10008.1.2.4.100" not in quick[0].transfer_syntax
        assert "1.2.840.10008.1.2.4.100" not in original[0].transfer_syntax


class TestConnectionsThatNeverAssociate:
    def test_a_port_scan_does_not_hold_the_association_slots(self, node):
        import socket

        n = node(receivers=1, max_associations=2)  # acse_timeout stays 30 s
        for _ in range(4):  # what a TCP connect scan does
            socket.create_connection((LOOPBACK, n.config.port), timeout=5).close()
        deadline = time.monotonic() + 5  # well inside acse_timeout: the slots are freed, not timed out
        while True:
            assoc = n.associate()
            if assoc.is_established or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert assoc.is_established, "a port scan kept a real sender out"
        assoc.release()
