"""What the node acknowledges is on disk: group commit of folder fsyncs, folders made durable,
and a node killed (SIGKILL) right after an acknowledgement still holding that instance."""

from __future__ import annotations

import errno
import io
import itertools
import threading
from pathlib import Path

import pydicom
import pytest
from node_helpers import LOOPBACK, NODE_AE, free_port, have_dcmtk, start_node, wait_listening, write_config, write_study

from edge_infer.node import spool as spool_module
from edge_infer.node.groupsync import FolderSync
from edge_infer.node.spool import Spool, make_folders

needs_dcmtk = pytest.mark.skipif(not have_dcmtk(), reason="DCMTK (storescu, storescp, echoscu) is not installed")


class RecordingFsync:
    """An fsync stand-in: records (start, end) ticks of a shared clock; can block or fail."""

    def __init__(self, clock, gate: threading.Event | None = None, error: OSError | None = None) -> None:
        self.clock = clock
        self.gate = gate
        self.error = error
        self.calls: list[tuple[int, int]] = []
        self.lock = threading.Lock()

    def __call__(self, folder: Path) -> None:
        start = next(self.clock)
        if self.gate is not None:
            assert self.gate.wait(10), "the test's gate was never opened"
        if self.error is not None:
            raise self.error
        with self.lock:
            self.calls.append((start, next(self.clock)))


def _wait_for(predicate, seconds: float = 10.0) -> None:
    done = threading.Event()
    for _ in range(int(seconds / 0.01)):
        if predicate():
            return
        done.wait(0.01)
    raise TimeoutError("condition not met in time")


class TestFolderSync:
    def test_callers_waiting_on_a_running_fsync_share_the_next_one(self, tmp_path):
        gate = threading.Event()
        fsync = RecordingFsync(itertools.count(), gate)
        sync = FolderSync(fsync)
        first = threading.Thread(target=sync.sync, args=(tmp_path,))
        first.start()
        _wait_for(lambda: sync._folders.get(tmp_path) is not None and sync._folders[tmp_path].running)
        waiters = [threading.Thread(target=sync.sync, args=(tmp_path,)) for _ in range(5)]
        for t in waiters:
            t.start()
        _wait_for(lambda: sync._folders[tmp_path].asked == 6)
        gate.set()
        for t in [first, *waiters]:
            t.join(10)
            assert not t.is_alive()
        assert len(fsync.calls) == 2  # the first caller's, then one for the five that asked during it

    def test_every_caller_returns_after_an_fsync_that_began_after_it_asked(self, tmp_path):
        clock = itertools.count()
        fsync = RecordingFsync(clock)
        sync = FolderSync(fsync)
        spans: list[tuple[int, int]] = []
        lock = threading.Lock()

        def caller() -> None:
            for _ in range(30):
                asked = next(clock)
                sync.sync(tmp_path)
                returned = next(clock)
                with lock:
                    spans.append((asked, returned))

        threads = [threading.Thread(target=caller) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(spans) == 180
        for asked, returned in spans:
            assert any(asked < start and end < returned for start, end in fsync.calls), (asked, returned)
        assert len(fsync.calls) <= 180

    def test_a_failed_fsync_fails_every_caller_it_covered(self, tmp_path):
        gate = threading.Event()
        fsync = RecordingFsync(itertools.count(), gate, OSError(errno.EIO, "Input/output error"))
        sync = FolderSync(fsync)
        errors: list[BaseException] = []

        def caller() -> None:
            try:
                sync.sync(tmp_path)
            except OSError as exc:
                errors.append(exc)

        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        gate.set()
        for t in threads:
            t.join(10)
        assert len(errors) == 4 and all(e.errno == errno.EIO for e in errors)
        with pytest.raises(OSError, match="Input/output error"):
            sync.sync(tmp_path)

    def test_no_state_is_kept_for_idle_folders(self, tmp_path):
        sync = FolderSync(RecordingFsync(itertools.count()))
        for i in range(3):
            sync.sync(tmp_path / str(i))
        assert sync._folders == {}


class TestMakeFolders:
    @pytest.fixture
    def synced(self, monkeypatch):
        folders: list[Path] = []
        monkeypatch.setattr(spool_module, "_FOLDERS", FolderSync(folders.append))
        monkeypatch.setattr(spool_module, "_DURABLE_FOLDERS", type(spool_module._DURABLE_FOLDERS)())
        return folders

    def test_new_folders_are_synced_into_their_parents_once(self, tmp_path, synced):
        make_folders(tmp_path / "a" / "b", tmp_path)
        assert (tmp_path / "a" / "b").is_dir()
        assert sorted(synced) == [tmp_path, tmp_path / "a"]
        make_folders(tmp_path / "a" / "b", tmp_path)
        assert len(synced) == 2

    def test_a_folder_moved_away_and_made_again_is_synced_again(self, tmp_path, synced):
        make_folders(tmp_path / "a" / "b", tmp_path)
        (tmp_path / "a").rename(tmp_path / "gone")
        synced.clear()
        make_folders(tmp_path / "a" / "b", tmp_path)
        assert (tmp_path / "a" / "b").is_dir() and synced.count(tmp_path / "a") == 1

    def test_nothing_above_the_root_is_synced(self, tmp_path, synced):
        make_folders(tmp_path / "spool" / "x", tmp_path / "spool")
        assert synced == [tmp_path / "spool"]
        make_folders(tmp_path / "elsewhere" / "y", tmp_path / "spool")
        assert (tmp_path / "elsewhere" / "y").is_dir() and synced == [tmp_path / "spool"]

    def test_atomic_write_syncs_the_final_folder_after_the_rename(self, tmp_path, synced, monkeypatch):
        seen = []
        target = tmp_path / "s" / "x.dcm"
        monkeypatch.setattr(spool_module, "_FOLDERS", FolderSync(lambda f: seen.append((f, target.is_file()))))
        Spool(tmp_path).write(target, b"data")
        assert seen[-1] == (target.parent, True) and target.read_bytes() == b"data"


@needs_dcmtk
@pytest.mark.slow
class TestKilledAfterAcknowledgement:
    def test_sigkill_right_after_each_acknowledgement_loses_nothing(self, tmp_path, model2d):
        pynetdicom = pytest.importorskip("pynetdicom")
        study = write_study(tmp_path / "study", seed=3)
        files = [study["t1"][0], study["t2"][1], study["flair"][2]]
        port = free_port()
        spool = tmp_path / "spool"
        write_config(tmp_path / "node.toml", spool, port, model2d, idle=60.0, allowed=("PYNETDICOM", "ECHOSCU"))
        for n, f in enumerate(files):
            node = start_node("serve", tmp_path / "node.toml", tmp_path / f"node-{n}.log")
            try:
                wait_listening(node, port)
                ae = pynetdicom.AE(ae_title="PYNETDICOM")
                ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
                ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4")
                assoc = ae.associate(LOOPBACK, port, ae_title=NODE_AE)
                assert assoc.is_established
                status = assoc.send_c_store(pydicom.dcmread(f))
                node.kill()  # at once: no release, no clean-up
                assoc.abort()
            finally:
                node.stop()
            assert status.Status == 0x0000
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            stored = Spool(spool).instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
            assert stored.is_file(), f"instance {n} acknowledged, then lost by a SIGKILL"
            again = pydicom.dcmread(io.BytesIO(stored.read_bytes()))
            assert again.SOPInstanceUID == ds.SOPInstanceUID and again.PixelData == pydicom.dcmread(f).PixelData
