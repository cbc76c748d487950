"""``edge-infer verify``: check a model folder on its own, artifact by artifact."""

from __future__ import annotations

import numpy as np

from .backends import load_backend
from .errors import BackendUnavailableError, EdgeInferError
from .manifest import load_manifest, read_artifact
from .model import check_specs, resolve_model
from .backends.onnx_wire import describe_onnx_external_data


def probe_input(m, spec) -> np.ndarray:
    """A small zero input of the shape the model accepts (tile, or a divisible plane)."""
    nd = m.dims
    if m.tile is not None:
        spatial = list(m.tile)
    else:
        spatial = [max(m.divisible_by, 16)] * nd
    shape = [1, len(m.modalities), *spatial] if m.layout.startswith("NC") else [1, *spatial, len(m.modalities)]
    return np.zeros(shape, dtype=np.float32)


def verify_model(ref) -> dict:
    """Verify manifest, hashes, external data, tensor specs and a test run of every artifact.

    Returns ``{"ok": bool, "lines": [...], "artifacts": [...]}``; a backend that is not
    installed is reported as skipped, not as a failure. Each ONNX artifact's entry has
    ``external_data``: ``"none"`` for a self-contained file, else one item per external
    tensor with its location and what is wrong with it (absolute, escapes the folder, a
    link, missing); any external data fails verification.
    """
    m = load_manifest(resolve_model(ref))
    lines = [f"manifest: {m.name} {m.version}, schema ok"]
    results, ok = [], True
    for art in m.artifacts:
        entry = {"file": art.file, "backend": art.backend, "precision": art.precision}
        if art.backend == "onnx" and m.artifact_path(art).is_file() and not m.artifact_path(art).is_symlink():
            found = describe_onnx_external_data(m.artifact_path(art))
            entry["external_data"] = found or "none"
        try:
            content = read_artifact(m, art)
            entry["sha256"] = "ok"
            be = load_backend(art.backend, m.artifact_path(art), threads=1, content=content)
            check_specs(m, be)
            y = be.run(probe_input(m, be.input))
            if not np.all(np.isfinite(y)):
                raise EdgeInferError(f"{art.file} produced NaN or Inf on a zero input")
            entry["status"] = "ok"
            contained = ", no external data" if art.backend == "onnx" else ""
            lines.append(f"{art.file}: sha256 ok{contained}, tensors match the manifest, test run ok "
                         f"({art.backend} {art.precision})")
        except BackendUnavailableError as exc:
            entry["status"] = "skipped"
            lines.append(f"{art.file}: sha256 ok, not run: {exc}")
        except EdgeInferError as exc:
            ok = False
            entry["status"] = "failed"
            entry["error"] = str(exc)
            lines.append(f"{art.file}: FAILED: {exc}")
        results.append(entry)
    lines.append("verified" if ok else "verification failed")
    return {"ok": ok, "lines": lines, "artifacts": results, "model": m.name, "version": m.version}
