"""Find a model by name or path, check it against its manifest, and load a backend for it."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .backends import Backend, load_backend
from .errors import ModelError
from .manifest import Artifact, Manifest, load_manifest, read_artifact

DEFAULT_MODEL = "default"


def bundled_models_dir() -> Path:
    return Path(str(resources.files("edge_infer") / "models"))


def bundled_models() -> dict[str, Path]:
    """Name -> folder of every model shipped inside the package."""
    root = bundled_models_dir()
    if not root.is_dir():
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / "model.json").is_file()}


def resolve_model(name_or_path: str | Path | None) -> Path:
    """The folder (or manifest file) of a bundled model name or a path."""
    bundled = bundled_models()
    ref = DEFAULT_MODEL if name_or_path in (None, "") else str(name_or_path)
    if ref in bundled:
        return bundled[ref]
    p = Path(ref)
    if p.exists():
        return p
    raise ModelError(
        f"no model {ref!r}: give a model folder, a model.json path, or a bundled name "
        f"({', '.join(bundled) or 'none installed'})"
    )


@dataclass
class LoadedModel:
    """A manifest, the artifact chosen from it, and the backend running that artifact."""

    manifest: Manifest
    artifact: Artifact
    backend: Backend
    path: Path

    def runners(self, n: int) -> list[Backend]:
        """``n`` backends that may run concurrently: this one and ``n - 1`` replicas."""
        return [self.backend] + [self.backend.replica() for _ in range(max(int(n), 1) - 1)]

    def describe(self) -> dict:
        m, a = self.manifest, self.artifact
        return {"name": m.name, "version": m.version, "placeholder": m.placeholder,
                "artifact": a.file, "precision": a.precision, "sha256": a.sha256, **self.backend.describe()}


def check_specs(m: Manifest, backend: Backend) -> None:
    """Refuse a model whose tensors disagree with its manifest, saying what differs."""
    ins, outs = backend.input.shape, backend.output.shape
    want_rank = m.dims + 2
    name = backend.path.name
    if len(ins) != want_rank or len(outs) != want_rank:
        raise ModelError(
            f"{name} takes a rank-{len(ins)} input and gives a rank-{len(outs)} output, but the manifest "
            f"says dims={m.dims} (rank {want_rank}); the manifest does not belong to this model"
        )
    ch_axis = 1 if m.layout.startswith("NC") else -1
    if ins[ch_axis] is not None and ins[ch_axis] != len(m.modalities):
        raise ModelError(
            f"{name} takes {ins[ch_axis]} input channels but the manifest lists {len(m.modalities)} "
            f"modalities ({', '.join(m.modalities)})"
        )
    if outs[ch_axis] is not None and outs[ch_axis] != len(m.channels):
        raise ModelError(
            f"{name} gives {outs[ch_axis]} output channels but the manifest lists {len(m.channels)} "
            f"({', '.join(m.channels)})"
        )
    spatial = ins[2:] if ch_axis == 1 else ins[1:-1]
    if m.tile is not None:
        for got, want in zip(spatial, m.tile, strict=False):
            if got is not None and got != want:
                raise ModelError(
                    f"{name} takes spatial size {tuple(spatial)} but the manifest's tile is {m.tile}"
                )
    elif any(s is not None for s in spatial):
        raise ModelError(
            f"{name} has a fixed spatial size {tuple(spatial)} but the manifest says the tile is dynamic; "
            "set input.tile in the manifest"
        )
    if backend.input.dtype not in ("float32", "float16", "int8", "uint8"):
        raise ModelError(f"{name} takes {backend.input.dtype} input; edge-infer feeds float32 images")


def load_model(name_or_path: str | Path | None = None, backend: str | None = None,
               precision: str | None = None, threads: int = 0, **options) -> LoadedModel:
    """Resolve, verify (sha256, tensor specs) and load a model.

    ``backend`` None takes the manifest's first artifact whose backend is installed (a board
    with only LiteRT runs the TFLite artifact without being told).
    """
    from .backends import installed_backends

    path = resolve_model(name_or_path)
    manifest = load_manifest(path)
    if backend is None:
        have = installed_backends()
        runnable = [a for a in manifest.artifacts if a.backend in have
                    and (precision is None or a.precision == precision)]
        backend = runnable[0].backend if runnable else None
    art = manifest.artifact(backend, precision)
    content = read_artifact(manifest, art)   # the backend runs exactly the bytes that were hashed
    file = manifest.artifact_path(art)
    be = load_backend(art.backend, file, threads=threads, content=content, **options)
    check_specs(manifest, be)
    return LoadedModel(manifest, art, be, file)
