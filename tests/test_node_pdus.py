"""A running node fed malformed PDUs and broken associations over raw loopback sockets.

The PDUs are built with pynetdicom's own encoders (A-ASSOCIATE-RQ, P-DATA-TF of a C-STORE),
then truncated, given corrupted lengths, or cut off mid C-STORE. After each, the node must
still serve (a normal C-STORE succeeds) and every instance acknowledged so far must be on
disk, whole. Every socket has a timeout; every loop is bounded.
"""

from __future__ import annotations

import io
import socket
import struct
import time
from pathlib import Path

import pydicom
import pytest
from node_helpers import LOOPBACK, NODE_AE, free_port, start_node, wait_until, write_config, write_study

pynetdicom = pytest.importorskip("pynetdicom")
from pynetdicom.dimse_messages import C_STORE_RQ  # noqa: E402
from pynetdicom.dimse_primitives import C_STORE  # noqa: E402
from pynetdicom.dsutils import encode  # noqa: E402
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RQ, P_DATA_TF  # noqa: E402
from pynetdicom.pdu_primitives import (  # noqa: E402
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import build_context  # noqa: E402

from edge_infer.node.audit import read_audit  # noqa: E402
from edge_infer.node.datasetlimit import OTHER_PDU_MAX, DataSetLimit, DataSetTooLarge  # noqa: E402
from edge_infer.node.peerlog import quiet_peer_errors  # noqa: E402
from edge_infer.node.spool import Spool  # noqa: E402

MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
CALLING = "PYNETDICOM"
TIMEOUT = 10.0
ACSE_TIMEOUT = 2  # the node closes a connection that has not associated after this long
PDU_ASSOCIATE_AC, PDU_ASSOCIATE_RJ, PDU_ABORT = 0x02, 0x03, 0x07
MAX_PDU = 16382
MAX_INSTANCE_MB = 1
NOT_A_PDU = [b"\x09\x00\x00\x00\x00\x04abcd", b"\x00" * 64, b"GET / HTTP/1.1\r\nHost: node\r\n\r\n" + b"x" * 4000]


# -- PDUs, encoded by pynetdicom ---------------------------------------------------------------
def associate_rq() -> bytes:
    """An A-ASSOCIATE-RQ proposing MR Image Storage (context 1, Explicit VR Little Endian)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = CALLING
    primitive.called_ae_title = NODE_AE
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = MAX_PDU
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = pynetdicom.PYNETDICOM_IMPLEMENTATION_UID
    primitive.user_information = [max_length, implementation]
    context = build_context(MR_STORAGE, [EXPLICIT_LE])
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


def c_store_pdus(path: Path, message_id: int = 1) -> list[bytes]:
    """The P-DATA-TF PDUs of a C-STORE of the instance at ``path`` on context 1."""
    ds = pydicom.dcmread(path)
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = ds.SOPClassUID
    primitive.AffectedSOPInstanceUID = ds.SOPInstanceUID
    primitive.Priority = 2
    primitive.DataSet = io.BytesIO(encode(ds, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    out = []
    for p_data in message.encode_msg(1, MAX_PDU):
        pdu = P_DATA_TF()
        pdu.from_primitive(p_data)
        out.append(pdu.encode())
    return out


def abort_rq() -> bytes:
    pdu = A_ABORT_RQ()
    pdu.source, pdu.reason_diagnostic = 0x00, 0x00
    return pdu.encode()


def with_length(pdu: bytes, length: int) -> bytes:
    """``pdu`` with its PDU-length field (bytes 2-5) replaced."""
    return pdu[:2] + struct.pack(">I", length) + pdu[6:]


class TestQuietPeerErrors:
    @pytest.fixture
    def lines(self):
        import logging

        class Keep(logging.Handler):
            def __init__(self):
                super().__init__()
                self.lines = []

            def emit(self, record):
                self.lines.append(self.format(record))

        logger = logging.getLogger("fakepeerlib.dul")
        keep = Keep()
        logger.addHandler(keep)
        logger.propagate = False
        quiet_peer_errors("fakepeerlib")
        yield logger, keep.lines
        logger.removeHandler(keep)

    def test_tracebacks_are_dropped_the_message_kept(self, lines):
        logger, out = lines
        try:
            raise ValueError("Invalid 'Called AE Title' value")
        except ValueError as exc:
            logger.exception(exc)
        assert out == ["Invalid 'Called AE Title' value"]

    def test_one_unknown_pdu_line_per_association_thread(self, lines):
        import threading

        logger, out = lines

        def junk():
            for byte in range(50):
                logger.error(f"Unknown PDU type received '0x{byte:02X}'")

        for _ in range(2):
            t = threading.Thread(target=junk)
            t.start()
            t.join(10)
        assert len(out) == 2 and all(line.startswith("Unknown PDU type received '0x00'") for line in out)

    def test_installed_once(self):
        assert quiet_peer_errors("fakepeerlib2") is quiet_peer_errors("fakepeerlib2")


def large_instance(folder: Path, source: Path, side: int = 1024) -> Path:
    """``source`` grown to ``side`` x ``side`` 16-bit pixels (2 MiB at 1024), saved in ``folder``."""
    ds = pydicom.dcmread(source)
    ds.Rows = ds.Columns = side
    ds.PixelData = bytes(side * side * 2)
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    path = folder / "large.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


class TestDataSetLimit:
    """The wrapper pynetdicom's DUL reads PDUs through: 6-byte header, then the body."""

    @staticmethod
    def feed(pdus: list[bytes], limit: int) -> tuple[DataSetLimit, list[str]]:
        stream = io.BytesIO(b"".join(pdus))
        refused: list[str] = []
        wrapper = DataSetLimit(stream.read, limit, refused.append)
        for _ in pdus:
            header = wrapper(6)
            wrapper(struct.unpack(">I", header[2:6])[0])
        return wrapper, refused

    def test_a_data_set_within_the_limit_passes_and_resets(self, tmp_path):
        pdus = c_store_pdus(write_study(tmp_path, seed=5)["t1"][0])
        wrapper, refused = self.feed(pdus * 3, 1 << 20)  # three instances in a row, each under 1 MiB
        assert refused == [] and wrapper.pending == 0

    def test_fragments_past_the_limit_are_refused_at_a_header(self, tmp_path):
        path = large_instance(tmp_path, write_study(tmp_path / "s", seed=5)["t1"][0])
        pdus = c_store_pdus(path)
        with pytest.raises(DataSetTooLarge, match="max_instance_mb"):
            self.feed(pdus, 1 << 20)

    def test_one_pdu_declaring_gigabytes_is_refused_before_its_body(self):
        header = struct.pack(">BBL", 0x04, 0, 0xF0000000)
        stream = io.BytesIO(header + b"x" * 100)
        refused: list[str] = []
        wrapper = DataSetLimit(stream.read, 1 << 30, refused.append)
        with pytest.raises(DataSetTooLarge):
            wrapper(6)
        assert stream.tell() == 6 and len(refused) == 1  # the body was never read

    def test_another_pdu_type_over_its_bound(self):
        stream = io.BytesIO(struct.pack(">BBL", 0x01, 0, OTHER_PDU_MAX + 1))
        with pytest.raises(DataSetTooLarge, match="type 0x01"):
            DataSetLimit(stream.read, 1 << 30, lambda reason: None)(6)


# -- raw sockets -------------------------------------------------------------------------------
def connect(port: int) -> socket.socket:
    return socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)


def read_pdu_type(sock: socket.socket) -> int | None:
    """The type of the next PDU the node sends, or None once it closes the connection."""
    try:
        header = sock.recv(6)
    except (TimeoutError, ConnectionResetError):
        return None
    return header[0] if header else None


def associated(port: int) -> socket.socket:
    """A raw connection on which the node has accepted :func:`associate_rq`."""
    sock = connect(port)
    sock.sendall(associate_rq())
    header = sock.recv(6)
    assert header and header[0] == PDU_ASSOCIATE_AC, f"association not accepted: {header!r}"
    length = struct.unpack(">I", header[2:6])[0]
    left = length
    for _ in range(100):  # bounded: the A-ASSOCIATE-AC is a few hundred bytes
        if left <= 0:
            break
        left -= len(sock.recv(left))
    return sock


def closed_by_node(sock: socket.socket, seconds: float) -> bool:
    """True once the node closed (or aborted) the connection, within ``seconds``."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        if not data or data[0] == PDU_ABORT:
            return True
    return False


# -- the node ----------------------------------------------------------------------------------
class RunningNode:
    def __init__(self, root: Path, model: Path) -> None:
        self.port = free_port()
        self.spool = root / "spool"
        self.study = write_study(root / "study", seed=21)
        self.unused = [f for files in self.study.values() for f in files]
        self.acknowledged: list[Path] = []
        config = write_config(root / "node.toml", self.spool, self.port, model, idle=600.0,
                              allowed=(CALLING,),
                              extra=f"acse_timeout = {ACSE_TIMEOUT}\nmax_instance_mb = {MAX_INSTANCE_MB}")
        self.log = root / "node.log"
        self.proc = start_node("serve", config, self.log)
        wait_until(self.echo, 120, "the node to answer C-ECHO", step=0.3)

    def _ae(self):
        ae = pynetdicom.AE(ae_title=CALLING)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = TIMEOUT
        return ae

    def echo(self) -> bool:
        if not self.proc.alive():
            raise RuntimeError(f"the node exited:\n{self.proc.text()[-2000:]}")
        ae = self._ae()
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate(LOOPBACK, self.port, ae_title=NODE_AE)
        if not assoc.is_established:
            return False
        try:
            return assoc.send_c_echo().Status == 0x0000
        finally:
            assoc.release()

    def take(self) -> Path:
        return self.unused.pop()

    def path_of(self, instance: Path) -> Path:
        ds = pydicom.dcmread(instance, stop_before_pixels=True)
        return Spool(self.spool).instance_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)

    def still_serving(self) -> None:
        """A normal C-STORE succeeds, and every instance acknowledged so far is on disk, whole."""
        instance = self.take()
        ae = self._ae()
        ae.add_requested_context(MR_STORAGE, EXPLICIT_LE)
        deadline = time.monotonic() + ACSE_TIMEOUT + 3
        while True:  # a connection still open without associating counts against max_associations (acse_timeout)
            assoc = ae.associate(LOOPBACK, self.port, ae_title=NODE_AE)
            if assoc.is_established or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert assoc.is_established, f"the node refused a normal association:\n{self.proc.text()[-2000:]}"
        try:
            status = assoc.send_c_store(pydicom.dcmread(instance))
        finally:
            assoc.release()
        assert status.Status == 0x0000
        self.acknowledged.append(instance)
        for sent in self.acknowledged:
            stored = pydicom.dcmread(self.path_of(sent))
            assert stored.PixelData == pydicom.dcmread(sent).PixelData
        assert self.proc.alive()


@pytest.fixture(scope="module")
def node(tmp_path_factory, model2d):
    running = RunningNode(tmp_path_factory.mktemp("pdus"), model2d)
    yield running
    assert running.proc.stop() == 0
    text = running.log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]  # malformed PDUs: one line each (edge_infer.node.peerlog)
    # at most one line per hostile connection (about 15 here), not one per junk byte (4000+)
    assert text.count("Unknown PDU type") <= 20, text[-3000:]


@pytest.mark.slow
class TestHostilePeers:
    def test_a_client_that_connects_and_sends_nothing(self, node):
        with connect(node.port) as silent:
            node.still_serving()  # served while the silent connection is open
            assert closed_by_node(silent, ACSE_TIMEOUT + 8), "the node kept a silent connection open"
        node.still_serving()
        why = f"no association request within acse_timeout ({ACSE_TIMEOUT} s)"
        wait_until(lambda: f"closed a connection from 127.0.0.1: {why}" in node.log.read_text(), 5, "the log line")
        assert {"event": "association_rejected", "reason": why} in [
            {k: v for k, v in r.items() if k != "time"} for r in read_audit(node.spool / "audit.jsonl")]

    def test_a_connection_closed_at_once_gets_no_line(self, node):
        before = node.log.read_text().count("closed a connection from")
        socket.create_connection((LOOPBACK, node.port), timeout=TIMEOUT).close()  # a port scan, a TCP probe
        node.still_serving()
        time.sleep(ACSE_TIMEOUT + 0.5)
        assert node.log.read_text().count("closed a connection from") == before

    @pytest.mark.parametrize("keep", [1, 6, 10, 74, -1])
    def test_truncated_associate_request(self, node, keep):
        pdu = associate_rq()
        with connect(node.port) as sock:
            sock.sendall(pdu[:keep])
        node.still_serving()

    @pytest.mark.parametrize("length", [0, 4, 0x7FFFFFFF, 0xFFFFFFFF])
    def test_associate_request_with_a_corrupted_length(self, node, length):
        with connect(node.port) as sock:
            sock.sendall(with_length(associate_rq(), length))
            assert read_pdu_type(sock) in (None, PDU_ASSOCIATE_RJ, PDU_ABORT)
        node.still_serving()

    @pytest.mark.parametrize("junk", NOT_A_PDU)
    def test_not_a_pdu(self, node, junk):
        with connect(node.port) as sock:
            sock.sendall(junk)
            assert read_pdu_type(sock) in (None, PDU_ABORT)
        node.still_serving()

    def test_p_data_with_a_pdv_longer_than_its_pdu(self, node):
        instance = node.take()
        command, *data = c_store_pdus(instance)
        corrupted = command[:6] + struct.pack(">I", 0x00FFFFFF) + command[10:]  # the PDV item length
        with associated(node.port) as sock:
            sock.sendall(corrupted + b"".join(data))
            assert closed_by_node(sock, TIMEOUT)
        assert not node.path_of(instance).exists()
        node.still_serving()

    def test_p_data_with_a_pdu_length_past_the_data(self, node):
        instance = node.take()
        pdus = c_store_pdus(instance)
        with associated(node.port) as sock:
            sock.sendall(pdus[0] + with_length(pdus[1], len(pdus[1]) + 1000)[:-10])
        assert not node.path_of(instance).exists()
        node.still_serving()

    def test_p_data_declaring_gigabytes_is_dropped_at_its_header(self, node):
        with associated(node.port) as sock:
            sock.sendall(struct.pack(">BBL", 0x04, 0, 0xF0000000) + b"\x00" * 64)
            assert closed_by_node(sock, 5), "the node waited for a 4 GB PDU body"
        refused = [r for r in read_audit(node.spool / "audit.jsonl") if r["event"] == "instance_refused"]
        assert any("max_instance_mb (1 MB)" in r["reason"] for r in refused), refused
        node.still_serving()

    def test_a_data_set_past_max_instance_mb(self, node, tmp_path):
        path = large_instance(tmp_path, node.take())
        with associated(node.port) as sock:
            for pdu in c_store_pdus(path):
                try:
                    sock.sendall(pdu)
                except (BrokenPipeError, ConnectionResetError):
                    break
            assert closed_by_node(sock, TIMEOUT)
        assert not node.path_of(path).exists()
        node.still_serving()

    @pytest.mark.parametrize("how", ["close", "abort"])
    def test_association_cut_off_mid_c_store(self, node, how):
        instance = node.take()
        command, data = c_store_pdus(instance)[0], b"".join(c_store_pdus(instance)[1:])
        with associated(node.port) as sock:
            sock.sendall(command + data[: len(data) // 2])
            if how == "abort":
                sock.sendall(abort_rq())
        node.still_serving()
        assert not node.path_of(instance).exists(), "an instance never acknowledged was stored"
        assert list((node.spool / "tmp").iterdir()) == []
