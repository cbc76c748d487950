"""DICOM TLS for the node: test CA made here with openssl; DCMTK's storescu/storescp +tls as peers."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from node_helpers import (
    LOOPBACK, NODE_AE, dcmtk, fake_seg_bytes, free_port, have_dcmtk, start_node, study_files, wait_until, write_config, write_study,
)

pytest.importorskip("pynetdicom")

from edge_infer.errors import ConfigError  # noqa: E402
from edge_infer.node.audit import read_audit  # noqa: E402
from edge_infer.node.config import Destination, load_config  # noqa: E402
from edge_infer.node.sender import send_files  # noqa: E402
from edge_infer.node.tls import client_context, server_context  # noqa: E402

needs_tools = pytest.mark.skipif(not (have_dcmtk() and shutil.which("openssl")), reason="needs DCMTK and openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _key_and_csr(folder: Path, name: str, cn: str) -> None:
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=folder)


def _ca(folder: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}", cwd=folder)


def _signed(folder: Path, name: str, ca: str) -> None:
    _key_and_csr(folder, name, "127.0.0.1")
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
             "-days", "2", "-out", f"{name}.crt", "-extfile", "san.ext", cwd=folder)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A test CA with a node and a client certificate, and a stranger CA with its own client."""
    folder = tmp_path_factory.mktemp("pki")
    _ca(folder, "ca")
    _ca(folder, "stranger-ca")
    for name, ca in (("node", "ca"), ("client", "ca"), ("stranger", "stranger-ca")):
        _signed(folder, name, ca)
    return folder


class TestContexts:
    def test_bcp195_minimum_and_client_verification(self, pki):
        ctx = server_context(pki / "node.crt", pki / "node.key", pki / "ca.crt")
        import ssl

        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2 and ctx.verify_mode == ssl.CERT_REQUIRED
        assert all("GCM" in c["name"] or "CHACHA" in c["name"] for c in ctx.get_ciphers())

    def test_missing_files_are_one_config_line(self, pki, tmp_path):
        with pytest.raises(ConfigError, match="cannot load the TLS certificate"):
            server_context(tmp_path / "none.crt", tmp_path / "none.key", None)
        with pytest.raises(ConfigError, match="needs tls_ca"):
            client_context(None, None, None)

    def test_config_needs_cert_and_key_together(self, pki):
        with pytest.raises(ConfigError, match="both tls_cert and tls_key"):
            load_config(None, spool="s", tls_cert=str(pki / "node.crt"))
        cfg = load_config(None, spool="s", destination={"ae_title": "P", "host": "h", "port": 1, "tls": True})
        assert cfg.destination.tls


@needs_tools
class TestTlsPeers:
    def _storescu(self, port, files, pki, cert):
        return subprocess.run([dcmtk("storescu"), "+tls", str(pki / f"{cert}.key"), str(pki / f"{cert}.crt"),
                               "+cf", str(pki / "ca.crt"), "-aet", "STORESCU", "-aec", NODE_AE, "-to", "20",
                               LOOPBACK, str(port), *map(str, files)], capture_output=True, text=True, timeout=120)

    @pytest.mark.parametrize("receivers", [1, 2])
    def test_receive_trusted_client_refuse_untrusted(self, pki, tmp_path, model2d, receivers):
        study = write_study(tmp_path / "study", seed=5)
        files = study_files(study)[:3]
        port = free_port()
        extra = (f'acse_timeout = 2\ntls_cert = "{pki / "node.crt"}"\ntls_key = "{pki / "node.key"}"\n'
                 f'tls_ca = "{pki / "ca.crt"}"\nreceivers = {receivers}')
        config = write_config(tmp_path / "node.toml", tmp_path / "spool", port, model2d, idle=60, extra=extra)
        node = start_node("serve", config, tmp_path / "node.log")
        try:
            wait_until(lambda: "listening as" in node.text(), 60, "the node to listen")
            if receivers > 1:  # then the silent client is served here, the others by the receiver process
                wait_until(lambda: "receiver processes ready" in node.text(), 60, "the receiver process")
            import socket

            silent = socket.create_connection((LOOPBACK, port))  # connects, never says hello
            refused = self._storescu(port, files[:1], pki, "stranger")
            assert refused.returncode != 0
            ok = self._storescu(port, files, pki, "client")
            assert ok.returncode == 0, ok.stderr
            assert len(list((tmp_path / "spool" / "studies").rglob("*.dcm"))) == 3
            assert node.alive()
            wait_until(lambda: node.text().count("TLS handshake failed") == 2, 10, "the silent client dropped")
            silent.close()
        finally:
            node.stop()
        lines = [line for line in node.text().splitlines() if "TLS handshake failed" in line]
        assert "CERTIFICATE_VERIFY_FAILED" in lines[0]  # the listener was not held by the silent client
        assert len(lines) == 2 and "Timeout" in lines[1] and "Traceback" not in node.text()
        assert any("TLS handshake" in r.get("reason", "") for r in read_audit(tmp_path / "spool" / "audit.jsonl"))

    def test_send_to_storescp_over_tls(self, pki, tmp_path):
        port = free_port()
        dest = tmp_path / "dest"
        dest.mkdir()
        scp = subprocess.Popen([dcmtk("storescp"), "+tls", str(pki / "node.key"), str(pki / "node.crt"),
                                "+cf", str(pki / "ca.crt"), "-aet", "DEST", "-od", str(dest), str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            seg = _fake_seg(tmp_path)
            cfg = load_config(None, spool=str(tmp_path / "spool"), tls_cert=str(pki / "client.crt"),
                              tls_key=str(pki / "client.key"), tls_ca=str(pki / "ca.crt"))
            ctx = client_context(cfg.tls_cert, cfg.tls_key, cfg.tls_ca)
            target = Destination("DEST", LOOPBACK, port, tls=True)
            assert wait_until(lambda: _send_ok(seg, target, cfg, ctx), 20, "storescp +tls to accept")
            assert len(list(dest.iterdir())) == 1
            stranger = client_context(pki / "stranger.crt", pki / "stranger.key", pki / "stranger-ca.crt")
            assert send_files([seg], target, cfg, stranger).error.startswith("association")
        finally:
            scp.terminate()
            scp.wait(10)


def _send_ok(seg, target, cfg, ctx):
    return not send_files([seg], target, cfg, ctx) or None


def _fake_seg(tmp_path: Path) -> Path:
    path = tmp_path / "seg.dcm"
    path.write_bytes(fake_seg_bytes())
    return path
