"""Node configuration: a TOML file, overridden by command-line flags.

Example TOML (every key optional except ``spool``)::

    ae_title = "EDGE_INFER"
    port = 11112
    bind = "127.0.0.1"
    allowed_aes = ["SCANNER1", "PACS"]     # empty: any calling AE title
    max_associations = 4
    receivers = 1                            # processes receiving DICOM connections (the node's own + N-1)
    max_pdu = 65536                          # bytes, 0: unlimited
    max_instance_mb = 1024                   # largest data set received (held in memory until complete)
    acse_timeout = 30
    dimse_timeout = 30
    network_timeout = 60
    spool = "/var/lib/edge-infer"
    idle_seconds = 10                        # a study is complete after this long without an instance
    model = "default"
    backend = "onnx"
    threads = 0
    nifti = false                            # also put the NIfTI mask into the outbox
    retry_initial = 2                        # first retry of a failed send, doubling up to retry_max
    retry_max = 300
    retry_permanent = 3600                   # after a permanent refusal (called AE unknown, no context)
    job_modalities = ["MR"]                  # instances of other modalities are kept aside, not segmented
    job_sop_classes = ["1.2.840.10008.5.1.4.1.1.4"]  # default: MR, Enhanced MR, Legacy Converted MR
    health_port = 0                          # HTTP /healthz /readyz /metrics; 0: off
    health_bind = "127.0.0.1"
    stow_port = 0                            # receive by DICOMweb STOW-RS (POST /studies); 0: off
    stow_bind = "127.0.0.1"
    stow_max_mb = 1024                       # largest STOW-RS request
    min_free_mb = 200                        # refuse associations below this much free spool disk
    stop_timeout = 20                        # on SIGTERM, wait this long for open transfers and the job
    tls_cert = "/etc/edge-infer/node.crt"    # DICOM TLS: receive with TLS when cert and key are set
    tls_key = "/etc/edge-infer/node.key"
    tls_ca = "/etc/edge-infer/ca.crt"        # clients must present a certificate it signed; verifies TLS destinations

    [destination]                            # where SEG results are sent with C-STORE
    ae_title = "PACS"
    host = "127.0.0.1"
    port = 104
    tls = false                              # send with DICOM TLS (needs tls_ca)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..toml_files import read_toml
from .classes import DEFAULT_MODALITIES, MR_SOP_CLASSES
from .dicomweb import WebDestination, is_web, web_destination

#: DICOM PS3.5 AE title: up to 16 characters of the default repertoire, no backslash or control
_AE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


@dataclass(frozen=True)
class Destination:
    """A DICOM node results are sent to."""

    ae_title: str
    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    """Everything ``edge-infer serve`` and ``edge-infer watch`` need."""

    spool: Path
    ae_title: str = "EDGE_INFER"
    port: int = 11112
    bind: str = "127.0.0.1"
    allowed_aes: tuple[str, ...] = ()
    max_associations: int = 4
    receivers: int = 1
    max_pdu: int = 65536
    max_instance_mb: int = 1024
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    network_timeout: float = 60.0
    idle_seconds: float = 10.0
    destination: Destination | WebDestination | None = None
    model: str | None = None
    backend: str | None = None
    threads: int = 0
    nifti: bool = False
    retry_initial: float = 2.0
    retry_max: float = 300.0
    retry_permanent: float = 3600.0
    poll_seconds: float = 0.25
    series_rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    job_modalities: tuple[str, ...] = DEFAULT_MODALITIES
    job_sop_classes: tuple[str, ...] = MR_SOP_CLASSES
    health_port: int = 0
    health_bind: str = "127.0.0.1"
    stow_port: int = 0
    stow_bind: str = "127.0.0.1"
    stow_max_mb: int = 1024
    min_free_mb: int = 200
    stop_timeout: float = 20.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None


_KEYS = {f.name for f in fields(NodeConfig)}


def load_config(path: str | Path | None = None, **overrides: Any) -> NodeConfig:
    """Read a TOML file (if given), apply ``overrides`` that are not None, and validate.

    Raises
    ------
    ConfigError
        Unreadable TOML, an unknown key, a value of the wrong type or range.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_toml(path, "config file", ConfigError)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return from_mapping(raw)


def _path(key: str, value: Any) -> Path:
    """A path with ``~`` expanded; ``~user`` of no such user is a :class:`ConfigError`."""
    try:
        return Path(str(value)).expanduser()
    except RuntimeError:  # pathlib: "Could not determine home directory."
        where = str(value)[:80]
        raise ConfigError(f"{key}: cannot expand ~ in {where!r} (no such user); give an absolute path") from None


def from_mapping(raw: Mapping[str, Any]) -> NodeConfig:
    """A validated :class:`NodeConfig` from plain values (as TOML gives them)."""
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(_KEYS))}")
    if "spool" not in raw:
        raise ConfigError("no spool folder: set spool = \"PATH\" in the config file or pass --spool PATH")
    values: dict[str, Any] = {"spool": _path("spool", raw["spool"]), **_numbers(raw)}
    texts = ("bind", "model", "backend", "health_bind", "stow_bind")
    values.update({key: str(raw[key]) for key in texts if key in raw})
    values.update({key: _texts(key, raw[key]) for key in ("job_modalities", "job_sop_classes") if key in raw})
    if "ae_title" in raw:
        values["ae_title"] = ae_title(raw["ae_title"], "ae_title")
    if "allowed_aes" in raw:
        values["allowed_aes"] = tuple(ae_title(a, "allowed_aes") for a in _text_list("allowed_aes", raw["allowed_aes"]))
    if "nifti" in raw:
        if not isinstance(raw["nifti"], bool):
            raise ConfigError(f"nifti must be true or false, got {raw['nifti']!r}")
        values["nifti"] = raw["nifti"]
    if raw.get("destination") is not None:
        values["destination"] = destination(raw["destination"])
    values.update({key: _path(key, raw[key]) for key in ("tls_cert", "tls_key", "tls_ca") if raw.get(key)})
    if ("tls_cert" in values) != ("tls_key" in values):
        raise ConfigError("give both tls_cert and tls_key (PEM files) to receive with DICOM TLS, or neither")
    if "series_rules" in raw:
        rules = raw["series_rules"]
        if not isinstance(rules, Mapping):
            raise ConfigError("series_rules must be a table of modality = [\"pattern\", ...]")
        values["series_rules"] = {str(k): _text_list(f"series_rules.{k}", v) for k, v in rules.items()}
    return NodeConfig(**values)


MAX_RECEIVERS = 16

#: integer keys -> their minimum; keys in seconds (more than 0)
_INTEGERS = {"port": 1, "max_associations": 1, "receivers": 1, "max_pdu": 0, "threads": 0, "health_port": 0,
             "min_free_mb": 0, "stow_port": 0, "stow_max_mb": 1, "max_instance_mb": 1}
_SECONDS = ("acse_timeout", "dimse_timeout", "network_timeout", "idle_seconds", "retry_initial", "retry_max",
            "retry_permanent", "poll_seconds", "stop_timeout")


def _numbers(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The integer and seconds keys ``raw`` sets, validated."""
    values: dict[str, Any] = {key: _int(key, raw[key], minimum=low) for key, low in _INTEGERS.items() if key in raw}
    for key in ("port", "health_port", "stow_port"):
        if values.get(key, 0) > 65535:
            raise ConfigError(f"{key} {values[key]} is out of range 1..65535")
    if values.get("receivers", 1) > MAX_RECEIVERS:
        raise ConfigError(f"receivers {values['receivers']} is more than {MAX_RECEIVERS}; "
                          "more than one per CPU core does not help")
    values.update({key: _positive(key, raw[key]) for key in _SECONDS if key in raw})
    return values


def ae_title(value: Any, what: str) -> str:
    """A valid AE title (1-16 printable characters, no backslash), stripped of padding spaces."""
    text = str(value).strip()
    if not _AE_RE.match(text):
        raise ConfigError(f"{what}: {value!r} is not a valid AE title "
                          "(1 to 16 printable ASCII characters, no backslash)")
    return text


def destination(value: Any) -> Destination | WebDestination:
    """A destination from ``{ae_title, host, port}`` or the text ``AE@HOST:PORT``; a DICOMweb
    one from ``dicomweb+http(s)://...`` or a table with ``url`` (:mod:`.dicomweb`)."""
    if is_web(value):
        return web_destination(value)
    if isinstance(value, str):
        m = re.match(r"^([^@]+)@(.+):(\d+)$", value.strip())
        if not m:
            raise ConfigError(f"destination {value!r} is not AE@HOST:PORT (e.g. PACS@127.0.0.1:104) "
                              "nor dicomweb+http(s)://HOST/PATH")
        value = {"ae_title": m.group(1), "host": m.group(2), "port": int(m.group(3))}
    if not isinstance(value, Mapping):
        raise ConfigError("destination must be a table with ae_title, host and port, or AE@HOST:PORT")
    missing = [k for k in ("ae_title", "host", "port") if k not in value]
    if missing:
        raise ConfigError(f"destination lacks {', '.join(missing)}; give ae_title, host and port")
    port = _int("destination.port", value["port"], minimum=1)
    if port > 65535:
        raise ConfigError(f"destination.port {port} is out of range 1..65535")
    tls = value.get("tls", False)
    if not isinstance(tls, bool):
        raise ConfigError(f"destination.tls must be true or false, got {tls!r}")
    return Destination(ae_title(value["ae_title"], "destination.ae_title"), str(value["host"]), port, tls)


def _texts(key: str, value: Any) -> tuple[str, ...]:
    """A non-empty list of strings (a single string counts as a list of one)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ConfigError(f"{key} must be a non-empty list of strings, got {value!r}")
    return tuple(v.strip() for v in items)


def _text_list(key: str, value: Any) -> tuple[str, ...]:
    """A text or a (possibly empty) list of texts, as a tuple."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{key} must be a text or a list of texts, got {type(value).__name__}")
    return tuple(items)


def _int(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, got {number}")
    return number


def _positive(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a number of seconds, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key} must be a number of seconds, got {value!r}") from None
    if not number > 0:
        raise ConfigError(f"{key} must be more than 0 seconds, got {number}")
    return number
