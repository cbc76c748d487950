"""Tests of the waiting reactor loops (:mod:`edge_infer.node.reactor`): a real SCP in this process
(the node's own server code) and real pynetdicom associations on 127.0.0.1. Every wait is bounded."""

from __future__ import annotations

import os
import threading
import time

import pydicom
import pytest
from node_helpers import LOOPBACK, NODE_AE, free_port, study_files, wait_until, write_study

pynetdicom = pytest.importorskip("pynetdicom")

from edge_infer.node import reactor  # noqa: E402
from edge_infer.node.audit import AuditLog  # noqa: E402
from edge_infer.node.config import NodeConfig  # noqa: E402
from edge_infer.node.scp import StoreHandler  # noqa: E402
from edge_infer.node.server import start_server, stop_associations  # noqa: E402
from edge_infer.node.spool import Spool  # noqa: E402

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    return study_files(write_study(tmp_path_factory.mktemp("study"), seed=5))


class _Scp:
    """The node's listener and C-STORE handler, in this process."""

    def __init__(self, tmp, **config) -> None:
        self.config = NodeConfig(spool=tmp / "spool", port=free_port(), ae_title=NODE_AE, bind=LOOPBACK, **config)
        self.spool = Spool(self.config.spool)
        self.audit = AuditLog(self.spool.audit_path)
        self.stored: list[str] = []
        handler = StoreHandler(self.spool, self.audit, self.stored.append, self.config)
        self.server = start_server(self.config, handler, self.audit)
        self.listening = True

    def associate(self, timeout: float = 20):
        ae = pynetdicom.AE(ae_title="PYNETDICOM")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        ae.add_requested_context(MR_STORAGE, "1.2.840.10008.1.2.1")
        assoc = ae.associate(LOOPBACK, self.config.port, ae_title=NODE_AE)
        assert assoc.is_established
        return assoc

    def accepted(self) -> list:
        return [a for a in self.server.active_associations if a.is_acceptor]

    def stop(self, within: float = 2) -> int:
        if self.listening:
            self.server.shutdown()
            self.listening = False
        return stop_associations(self.server, time.monotonic() + within, self.audit)


@pytest.fixture
def scp(tmp_path):
    made = []

    def make(**config):
        made.append(_Scp(tmp_path, **config))
        return made[-1]

    yield make
    for s in made:
        s.stop()


class _CountedSelect:
    """Stands in for the ``select`` module inside :mod:`reactor`, counting the waits."""

    def __init__(self) -> None:
        import select

        self._select = select.select
        self.calls = 0
        self.lock = threading.Lock()

    def select(self, *args):
        with self.lock:
            self.calls += 1
        return self._select(*args)


class TestAcceptedAssociations:
    def test_stores_and_releases(self, scp, study):
        s = scp()
        assoc = s.associate()
        [server_side] = s.accepted()
        assert isinstance(server_side.dimse.msg_queue, reactor._WakingQueue), "the waiting loops are not installed"
        statuses = [int(assoc.send_c_store(pydicom.dcmread(f)).Status) for f in study[:12]]
        assert statuses == [0] * 12
        assoc.release()
        assert assoc.is_released
        wait_until(lambda: not server_side.is_alive() and not server_side.dul.is_alive(), 5,
                   "the association's threads to end")
        assert len(s.stored) == 12
        assert len(list(s.spool.studies.rglob("*.dcm"))) == 12

    def test_an_idle_association_waits_instead_of_polling(self, scp, monkeypatch):
        s = scp()
        counted = _CountedSelect()
        monkeypatch.setattr(reactor, "select", counted)
        associations = [s.associate() for _ in range(2)]
        start = counted.calls
        time.sleep(1.0)
        waits = counted.calls - start
        for assoc in associations:
            assoc.release()
        # pynetdicom's own loop looks at the socket every 1 ms: ~2000 times here
        assert 2 <= waits <= 2 * (1.0 / reactor.TICK) * 1.5 + 10, waits

    def test_a_peer_abort_ends_the_association(self, scp, study):
        s = scp()
        assoc = s.associate()
        assert int(assoc.send_c_store(pydicom.dcmread(study[0])).Status) == 0
        [server_side] = s.accepted()
        assoc.abort()
        wait_until(lambda: server_side.is_aborted and not server_side.dul.is_alive(), 5, "the abort to be seen")

    def test_network_timeout_aborts_a_silent_association(self, scp):
        s = scp(network_timeout=1)
        assoc = s.associate()
        t0 = time.monotonic()
        wait_until(lambda: assoc.is_aborted or not assoc.is_established, 10, "the node to end the idle association")
        assert 0.9 <= time.monotonic() - t0 <= 1 + 2 * reactor.TICK + 2  # a timer tick late at most, plus slack

    def test_no_descriptor_is_left_behind(self, scp):
        s = scp()
        s.associate().release()  # anything opened once per process is open now
        wait_until(lambda: not s.accepted(), 5, "the first association to end")
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(10):
            s.associate().release()
        wait_until(lambda: not s.accepted(), 5, "the associations to end")
        assert len(os.listdir("/proc/self/fd")) <= before + 1  # the wake-up socket pairs are closed

    def test_stop_aborts_what_is_still_open(self, scp):
        s = scp()
        assoc = s.associate()
        [server_side] = s.accepted()
        assert s.stop(within=0) == 1
        wait_until(lambda: not server_side.dul.is_alive(), 5, "the DUL thread to end")
        wait_until(lambda: assoc.is_aborted, 5, "the peer to see the abort")


    @pytest.mark.parametrize("end", ["release", "abort"])
    def test_ending_it_from_another_thread_is_not_held_up_by_the_wait(self, scp, monkeypatch, end):
        s = scp()
        assoc = s.associate()
        [server_side] = s.accepted()
        monkeypatch.setattr(reactor, "TICK", 5.0)  # both loops now wait 5 s unless woken
        time.sleep(0.3)
        t0 = time.monotonic()
        getattr(server_side, end)()  # release pauses the acceptor loop first; both send through the DUL loop
        assert time.monotonic() - t0 < 2.0
        wait_until(lambda: assoc.is_released or assoc.is_aborted, 2, "the peer to see the end")


class TestInstall:
    def test_refuses_what_it_does_not_know(self):
        assert reactor.install(object()) is False

    def test_another_pynetdicom_release_keeps_its_own_loops(self, scp, study, monkeypatch):
        monkeypatch.setattr(pynetdicom, "__version__", "3.1.0")
        s = scp()
        assoc = s.associate()
        [server_side] = s.accepted()
        assert not isinstance(server_side.dimse.msg_queue, reactor._WakingQueue)
        assert int(assoc.send_c_store(pydicom.dcmread(study[0])).Status) == 0  # served by pynetdicom's loops
        assoc.release()
        assert assoc.is_released

    def test_refuses_an_association_already_running(self, scp):
        s = scp()
        s.associate()
        [server_side] = s.accepted()
        assert reactor.install(server_side) is False
