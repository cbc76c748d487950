"""A DICOMweb STOW-RS destination (PS3.18 10.5) through ``dicomweb-client``.

``--destination dicomweb+https://pacs.example.org/dicom-web`` (or ``dicomweb+http://``), or in
TOML::

    [destination]
    url = "dicomweb+https://pacs.example.org/dicom-web"
    auth = "basic"                                # none | basic | bearer
    credentials_file = "/etc/edge-infer/pacs.cred"   # "user:password" (basic) or the token (bearer)
    # credentials_env = "EDGE_INFER_PACS_TOKEN"      # or from this environment variable

Credentials never come from the command line or the URL (they would show in ``ps`` and logs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

SCHEMES = ("dicomweb+http://", "dicomweb+https://")
AUTH = ("none", "basic", "bearer")
INSTALL_HINT = "pip install 'edge-infer[dicom]'"


@dataclass(frozen=True)
class WebDestination:
    """A STOW-RS service results are sent to (``url`` is the service root, http or https)."""

    url: str
    auth: str = "none"
    credentials_file: Path | None = None
    credentials_env: str | None = None

    def __str__(self) -> str:
        return f"STOW-RS {self.url}"


def is_web(value: Any) -> bool:
    """True for a ``dicomweb+http(s)://`` text or a table with a ``url``."""
    if isinstance(value, str):
        return value.strip().startswith(SCHEMES)
    return isinstance(value, Mapping) and "url" in value


def web_destination(value: Any) -> WebDestination:
    """A :class:`WebDestination` from the URL text or its TOML table."""
    table = {"url": value} if isinstance(value, str) else dict(value)
    unknown = sorted(set(table) - {"url", "auth", "credentials_file", "credentials_env"})
    if unknown:
        raise ConfigError(f"unknown destination key(s) {', '.join(unknown)} for a DICOMweb destination; "
                          "valid: url, auth, credentials_file, credentials_env")
    url = str(table["url"]).strip()
    if not url.startswith(SCHEMES):
        raise ConfigError(f"destination url must start with {' or '.join(SCHEMES)}")
    url = url[len("dicomweb+"):]
    if "@" in url.split("/", 3)[2]:
        raise ConfigError("credentials in the destination URL would show in ps and logs: "
                          "put them in credentials_file or credentials_env")
    auth = str(table.get("auth", "none"))
    if auth not in AUTH:
        raise ConfigError(f"destination auth {auth!r} is not one of {', '.join(AUTH)}")
    file = Path(str(table["credentials_file"])).expanduser() if table.get("credentials_file") else None
    env = str(table["credentials_env"]) if table.get("credentials_env") else None
    if auth != "none" and (file is None) == (env is None):
        raise ConfigError(f"auth = {auth!r} needs exactly one of credentials_file or credentials_env")
    return WebDestination(url.rstrip("/"), auth, file, env)


def credentials(dest: WebDestination) -> str:
    """The secret for ``dest`` from its file or environment variable ('' without auth)."""
    if dest.auth == "none":
        return ""
    if dest.credentials_file is not None:
        try:
            secret = dest.credentials_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read credentials_file {dest.credentials_file} ({exc.strerror})") from None
    else:
        secret = os.environ.get(dest.credentials_env or "", "").strip()
    if not secret or (dest.auth == "basic" and ":" not in secret):
        raise ConfigError(f"no {'user:password' if dest.auth == 'basic' else 'token'} in "
                          f"{dest.credentials_file or '$' + str(dest.credentials_env)}")
    return secret


def stow_client(dest: WebDestination, secret: str, timeout: float):
    """A ``DICOMwebClient`` for ``dest`` with its authentication."""
    try:
        import requests
        from dicomweb_client.api import DICOMwebClient
    except ImportError:
        from ..errors import BackendUnavailableError

        raise BackendUnavailableError(f"a DICOMweb destination needs dicomweb-client: {INSTALL_HINT}") from None
    session = requests.Session()
    if dest.auth == "basic":
        user, _, password = secret.partition(":")
        session.auth = (user, password)
    elif dest.auth == "bearer":
        session.headers["Authorization"] = f"Bearer {secret}"
    return DICOMwebClient(url=dest.url, session=session, timeout=timeout)


def stow_files(files: list[Path], client) -> tuple[str, bool]:
    """STOW-RS ``files`` in one request; ('', False) when stored, else (why, permanent)."""
    import pydicom
    import requests

    try:
        answer = client.store_instances([pydicom.dcmread(p) for p in files])
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else 0
        return f"STOW-RS answered HTTP {code}", code in (400, 401, 403, 404, 405, 415)
    except (requests.RequestException, OSError) as exc:
        return f"STOW-RS failed ({type(exc).__name__})", False
    failed = answer.get("FailedSOPSequence") if answer is not None else None
    if failed:
        return f"STOW-RS refused {len(failed)} instance(s)", False
    return "", False
