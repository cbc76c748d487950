"""Write a model folder: artifacts per backend and precision, plus the runtime's manifest.

Everything is written into a temporary sibling folder, verified, and renamed into place, so
a failure leaves nothing partial behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
from torch import nn

from edge_infer.crop import CropRule
from edge_infer.manifest import MANIFEST_NAME, Artifact, Label, Manifest, load_manifest, sha256_file, to_json_dict
from edge_infer.vocab import BACKENDS, PRECISIONS

from .data import REGIONS
from .errors import ExportError
from .macs import count_macs, count_parameters

INTENDED_USE = "research and demonstration on synthetic phantoms; not for clinical use"
BRATS_LABELS = (Label(2, "edema", "WT"), Label(1, "necrotic_core", "TC"), Label(4, "enhancing", "ET"))


def artifact_name(backend: str, precision: str) -> str:
    suffix = {"onnx": ".onnx", "tflite": ".tflite"}[backend]
    return f"model{suffix}" if precision == "fp32" else f"model_{precision}{suffix}"


@dataclass
class ExportSpec:
    """What to export and how to describe it."""

    name: str
    version: str = "1"
    backends: Sequence[str] = BACKENDS
    precisions: Sequence[str] = ("fp32",)
    tile: tuple[int, ...] | None = None
    threshold: Sequence[float] | float = 0.5
    provenance: dict = field(default_factory=dict)
    modalities: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
    intended_use: str = INTENDED_USE
    placeholder: bool = False

    def check(self) -> None:
        bad = [b for b in self.backends if b not in BACKENDS] + [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ExportError(f"unknown backend/precision {bad[0]!r}; backends: {', '.join(BACKENDS)}; "
                              f"precisions: {', '.join(PRECISIONS)}")
        if "fp32" not in self.precisions:
            raise ExportError("precisions must include fp32 (fp16 and int8 are derived from it)")


def export_tile(model: nn.Module, spec: ExportSpec) -> tuple[tuple[int, ...], tuple[int, ...] | None]:
    """(sample size used to export, tile written to the manifest).

    A 2D ONNX-only export is fully dynamic (manifest tile null). TFLite graphs have a fixed
    spatial size, and 3D models run in patches, so then the manifest names the tile.
    """
    info = model.info
    tile = tuple(spec.tile) if spec.tile else tuple(info.default_tile)
    if len(tile) != info.dims or any(t % info.divisible_by for t in tile):
        raise ExportError(f"tile {tile} must have {info.dims} sizes divisible by {info.divisible_by} for {info.arch}")
    dynamic = info.dims == 2 and info.dynamic_spatial and "tflite" not in spec.backends
    return tile, None if dynamic else tile


def pinned_artifacts(folder: Path, pairs: Iterable[tuple[str, str]]) -> tuple[Artifact, ...]:
    """The manifest entries of the ``(backend, precision)`` files in ``folder``: sha256 and size measured."""
    return tuple(Artifact(file=artifact_name(b, p), backend=b, precision=p,
                          sha256=sha256_file(folder / artifact_name(b, p)),
                          bytes=(folder / artifact_name(b, p)).stat().st_size) for b, p in pairs)


def build_manifest(model: nn.Module, spec: ExportSpec, folder: Path, artifacts: Iterable[tuple[str, str]],
                   manifest_tile: tuple[int, ...] | None, sample: tuple[int, ...]) -> Manifest:
    """A :class:`Manifest` for the artifact files in ``folder`` (sha256 and size measured)."""
    info = model.info
    arts = pinned_artifacts(folder, artifacts)
    thr = np.broadcast_to(np.asarray(spec.threshold, float), (len(REGIONS),))
    prov = {"architecture": info.arch, "model_config": info.config,
            "macs_counted_at": list(sample), "exporter": "edge-infer export", **spec.provenance}
    return Manifest(
        name=spec.name, version=spec.version, dims=info.dims, modalities=tuple(spec.modalities),
        spacing_mm=(1.0, 1.0, 1.0), orientation="RAS", layout="NCHW" if info.dims == 2 else "NCDHW",
        tile=manifest_tile, divisible_by=info.divisible_by, normalization="zscore_nonzero",
        activation="sigmoid", channels=REGIONS, threshold=tuple(float(t) for t in thr), labels=BRATS_LABELS,
        artifacts=arts, parameters=count_parameters(model), macs=count_macs(model, (len(spec.modalities), *sample)),
        slice_axis=2, placeholder=spec.placeholder, intended_use=spec.intended_use, provenance=prov,
        crop=CropRule("nonzero", 0.0))  # issue 15: crop to the nonzero box, as nnU-Net does


def write_manifest(folder: str | os.PathLike, manifest: Manifest) -> Manifest:
    """Serialise with :func:`edge_infer.manifest.to_json_dict` and read it back through the runtime."""
    path = Path(folder) / MANIFEST_NAME
    tmp = path.with_suffix(".json.part")
    tmp.write_text(json.dumps(to_json_dict(manifest), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return load_manifest(path)


def write_artifacts(model: nn.Module, folder: Path, backends: Sequence[str], precisions: Sequence[str],
                    sample: tuple[int, ...], batches: Sequence[np.ndarray] = ()
                    ) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """Write the fp32 artifact of each backend and its fp16 / int8 variants into ``folder``.

    Returns ``(backend, precision)`` pairs in manifest order (by precision, then backend), and
    the variants asked for but not made, with the reason (for the manifest's provenance).
    ``model`` has ``info`` (see :class:`export.zoo.ModelInfo`); ``sample`` is ``(C, *tile)``.
    """
    from .onnx_export import export_onnx, onnx_to_fp16, onnx_to_int8
    from .tflite_export import export_tflite, tflite_has_fp16, tflite_to_fp16, tflite_to_int8

    done, not_made = [], {}
    for backend in backends:
        fp32 = folder / artifact_name(backend, "fp32")
        if backend == "onnx":
            export_onnx(model, fp32, sample, dynamic_spatial=True)
        else:
            export_tflite(model, fp32, sample)
        done.append((backend, "fp32"))
        if "fp16" in precisions:
            fp16 = folder / artifact_name(backend, "fp16")
            (onnx_to_fp16 if backend == "onnx" else tflite_to_fp16)(fp32, fp16)
            if backend == "tflite" and not tflite_has_fp16(fp16):
                fp16.unlink()             # the quantizer cast nothing (CONV_3D): not an fp16 artifact
                not_made[f"{backend}/fp16"] = "ai-edge-quantizer casts no layer of this graph to fp16 (no CONV_3D support)"
            else:
                done.append((backend, "fp16"))
        if "int8" in precisions:
            (onnx_to_int8 if backend == "onnx" else tflite_to_int8)(fp32, folder / artifact_name(backend, "int8"), batches)
            done.append((backend, "int8"))
    return sorted(done, key=lambda bp: (PRECISIONS.index(bp[1]), BACKENDS.index(bp[0]))), not_made


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """A temporary sibling of ``out`` to write into, renamed to ``out`` when the block succeeds.

    On any exception the temporary folder is removed and nothing exists under ``out`` (an
    existing ``out`` is replaced only with ``overwrite``, and only at the end).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise ExportError(f"{out} exists; choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)           # mkdtemp makes 0700; a model folder is package data
    try:
        yield tmp
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, trash / out.name)
            shutil.rmtree(trash)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def add_verification(folder: Path, manifest: Manifest, report: dict, parity: dict | None = None) -> Manifest:
    """Rewrite ``folder``'s manifest with ``report`` as ``provenance["verification"]`` (and
    ``parity``, the figures against the model's source, as ``provenance["parity"]``)."""
    prov = dict(manifest.provenance, verification=report, **({"parity": parity} if parity is not None else {}))
    return write_manifest(folder, dataclasses.replace(manifest, provenance=prov, folder=None))


def export_folder(model: nn.Module, out: str | os.PathLike, spec: ExportSpec,
                  calibration: Callable[[tuple[int, ...]], Iterable[np.ndarray]] | None = None,
                  check: Callable[[Path, Manifest], dict] | None = None, overwrite: bool = False) -> Manifest:
    """Export ``model`` to ``out`` (artifacts + model.json), atomically.

    Parameters
    ----------
    calibration : ``f(sample_shape) -> batches`` of normalised slices/patches, needed for int8
    check : called with the temporary folder and manifest before it is moved into place
        (parity verification); its dict is stored in ``provenance["verification"]``; an
        exception aborts the export and nothing is left at ``out``.
    """
    spec.check()
    if "int8" in spec.precisions and calibration is None:
        raise ExportError("int8 export needs calibration data")
    model = model.eval()
    tile, manifest_tile = export_tile(model, spec)
    sample = (len(spec.modalities), *tile)
    with staged_folder(out, overwrite) as tmp:
        batches = list(calibration(sample)) if "int8" in spec.precisions else []
        order, not_made = write_artifacts(model, tmp, spec.backends, spec.precisions, sample, batches)
        if not_made:
            spec = dataclasses.replace(spec, provenance={**spec.provenance, "not_made": not_made})
        manifest = write_manifest(tmp, build_manifest(model, spec, tmp, order, manifest_tile, tuple(tile)))
        if check is not None:
            add_verification(tmp, manifest, check(tmp, manifest))
    return load_manifest(out)
