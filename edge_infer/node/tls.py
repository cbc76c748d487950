"""DICOM TLS (PS3.15 Annex B, BCP 195 profile) for receiving and sending, from PEM files.

Both directions use TLS 1.2 or later with forward-secret AEAD cipher suites (the BCP 195
non-downgrading profile DCMTK defaults to). Receiving with ``tls_ca`` set requires the
client's certificate to chain to that CA; sending verifies the destination against it.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from ..errors import ConfigError

#: BCP 195 (RFC 9325) recommended suites for TLS 1.2; TLS 1.3 suites are always AEAD
BCP195_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM"


def _context(purpose: ssl.Purpose, cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(BCP195_CIPHERS)
    try:
        if cert is not None:
            ctx.load_cert_chain(str(cert), str(key) if key else None)
        if ca is not None:
            ctx.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate, key or CA ({getattr(exc, 'strerror', None) or exc}); "
                          "give PEM files in tls_cert, tls_key and tls_ca") from None
    return ctx


def server_context(cert: Path, key: Path, ca: Path | None) -> ssl.SSLContext:
    """For receiving: our certificate and key; with ``ca``, clients must present a certificate it signed."""
    ctx = _context(ssl.Purpose.CLIENT_AUTH, cert, key, ca)
    ctx.verify_mode = ssl.CERT_REQUIRED if ca is not None else ssl.CERT_NONE
    return ctx


def client_context(cert: Path | None, key: Path | None, ca: Path | None) -> ssl.SSLContext:
    """For sending: the destination must present a certificate ``ca`` signed (for its host name
    or address); ours is presented when given."""
    if ca is None:
        raise ConfigError("a TLS destination needs tls_ca (the CA that signed the destination's certificate)")
    ctx = _context(ssl.Purpose.SERVER_AUTH, cert, key, ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = True
    return ctx
