"""The spec of a model brought from elsewhere: the manifest without its artifacts.

A user writes one JSON or TOML file with the manifest's fields (docs/manifest.md) except
``artifacts``, ``parameters`` and ``macs``, which the export measures and writes. It goes
through the runtime's own validator (:func:`edge_infer.manifest.parse_manifest`), so a bad
field is reported by its dotted path exactly as in a model folder.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from edge_infer.errors import EdgeInferError, ModelError
from edge_infer.manifest import SCHEMA, SCHEMA_VERSION, Manifest, parse_manifest
from edge_infer.toml_files import read_toml

from .errors import SpecError

#: fields the export writes; a spec that sets them is refused
MEASURED = ("artifacts", "parameters", "macs")
_PLACEHOLDER = {"file": "spec.onnx", "backend": "onnx", "precision": "fp32", "sha256": "0" * 64, "bytes": 0}


def spec_from_dict(d: Any, where: str = "spec") -> Manifest:
    """Validate a spec dictionary; returns a :class:`Manifest` whose ``artifacts`` are empty."""
    if not isinstance(d, dict):
        raise SpecError(f"{where} must be an object of manifest fields (docs/manifest.md)")
    written = [k for k in MEASURED if k in d]
    if written:
        raise SpecError(f"{where} sets {written[0]!r}, which the export measures and writes; remove it")
    full = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **d,
            "artifacts": [_PLACEHOLDER], "parameters": 0, "macs": 0}
    try:
        m = parse_manifest(full)
    except ModelError as exc:
        raise SpecError(f"{where}: {exc}") from None
    return dataclasses.replace(m, artifacts=())


def load_spec(path: str | Path) -> Manifest:
    """Read a ``.json`` or ``.toml`` spec file and validate it (:func:`spec_from_dict`)."""
    p = Path(path)
    if p.suffix.lower() == ".toml":
        try:
            d = read_toml(p, "spec", ModelError)
        except EdgeInferError as exc:
            raise SpecError(str(exc)) from None
    else:
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SpecError(f"spec {p} cannot be read: {exc.strerror or exc}") from None
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise SpecError(f"spec {p} is not valid JSON ({str(exc).splitlines()[0][:200]})") from None
    return spec_from_dict(d, where=f"spec {p.name}")
