"""``edge-infer verify``: check a model folder on its own, artifact by artifact."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends import BackendName, load_backend
from .backends.onnx_wire import describe_onnx_external_data
from .errors import BackendUnavailableError, EdgeInferError
from .manifest import Artifact, Manifest, load_manifest, read_artifact
from .model import check_specs, resolve_model


@dataclass
class ArtifactCheck:
    """One artifact's verification: ``status`` ok, skipped (backend not installed) or failed.

    ``external_data`` (ONNX only): ``"none"`` for a self-contained file, else one item per
    external tensor with its location and what is wrong with it.
    """

    file: str
    backend: str
    precision: str
    status: str = "failed"
    sha256: str | None = None
    error: str | None = None
    external_data: Any = None
    line: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.file, "backend": self.backend, "precision": self.precision}
        if self.external_data is not None:
            out["external_data"] = self.external_data
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        out["status"] = self.status
        if self.error is not None:
            out["error"] = self.error
        return out


@dataclass
class VerifyResult:
    """A model folder's verification: ``ok`` unless an artifact failed; ``lines`` for people."""

    model: str
    version: str
    artifacts: list[ArtifactCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(a.status != "failed" for a in self.artifacts)

    @property
    def lines(self) -> list[str]:
        return ([f"manifest: {self.model} {self.version}, schema ok"] + [a.line for a in self.artifacts]
                + ["verified" if self.ok else "verification failed"])

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "lines": self.lines, "artifacts": [a.to_dict() for a in self.artifacts],
                "model": self.model, "version": self.version}


def probe_input(m, spec) -> np.ndarray:
    """A small zero input of the shape the model accepts (tile, or a divisible plane)."""
    nd = m.dims
    if m.tile is not None:
        spatial = list(m.tile)
    else:
        spatial = [max(m.divisible_by, 16)] * nd
    shape = [1, len(m.modalities), *spatial] if m.layout.startswith("NC") else [1, *spatial, len(m.modalities)]
    return np.zeros(shape, dtype=np.float32)


def verify_model(ref) -> VerifyResult:
    """Verify manifest, hashes, external data, tensor specs and a test run of every artifact.

    A backend that is not installed is reported as skipped, not as a failure; any external
    data of an ONNX artifact (absolute, escaping the folder, a link, missing) fails it.
    """
    m = load_manifest(resolve_model(ref))
    return VerifyResult(m.name, m.version, [verify_artifact(m, art) for art in m.artifacts])


def verify_artifact(m: Manifest, art: Artifact) -> ArtifactCheck:
    """Hash, external data, tensor specs and a finite test run of one artifact."""
    check = ArtifactCheck(art.file, art.backend, art.precision)
    onnx = art.backend == BackendName.ONNX
    path = m.artifact_path(art)
    if onnx and path.is_file() and not path.is_symlink():
        check.external_data = describe_onnx_external_data(path) or "none"
    try:
        content = read_artifact(m, art)
        check.sha256 = "ok"
        be = load_backend(art.backend, path, threads=1, content=content)
        check_specs(m, be)
        y = be.run(probe_input(m, be.input))
        if not np.all(np.isfinite(y)):
            raise EdgeInferError(f"{art.file} produced NaN or Inf on a zero input")
        check.status = "ok"
        contained = ", no external data" if onnx else ""
        check.line = (f"{art.file}: sha256 ok{contained}, tensors match the manifest, test run ok "
                      f"({art.backend} {art.precision})")
    except BackendUnavailableError as exc:
        check.status, check.line = "skipped", f"{art.file}: sha256 ok, not run: {exc}"
    except EdgeInferError as exc:
        check.status, check.error, check.line = "failed", str(exc), f"{art.file}: FAILED: {exc}"
    return check
