"""The model manifest: the only contract between the export stage and the runtime.

A model is a folder (or files side by side) holding one or more artifacts (``.onnx``,
``.tflite``) and a ``model.json`` manifest. The manifest says everything the device needs to
run the model correctly; :func:`load_manifest` validates it field by field and every problem
is reported with the field's dotted path. The schema is documented in ``docs/manifest.md``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .backends.onnx_wire import check_onnx_self_contained
from .crop import CropRule, parse_crop_rule
from .errors import IntegrityError, ModelError
from .fields import MISSING, short_repr, typed_field
from .manifest_parity import check_provenance
from .manifest_v2 import Intensity, parse_schema2_input
from .vocab import PRECISIONS, BackendName

SCHEMA = "edge-infer/model-manifest"
SCHEMA_VERSION = 2
#: versions this runtime reads: a version 1 manifest reads as version 2 with the new fields' defaults
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
MODALITIES = ("t1", "t1ce", "t2", "flair")
ACTIVATIONS = ("sigmoid", "softmax")
NORMALIZATIONS = ("zscore_nonzero", "zscore", "minmax", "none", "clipped_zscore")
BACKEND_SUFFIX = {BackendName.ONNX.value: ".onnx", BackendName.TFLITE.value: ".tflite"}
ORIENTATION_CODES = set("RLAPSI")


@dataclass(frozen=True)
class Label:
    """One output label: voxels in ``region`` (a channel name) get ``value``.

    Labels are painted in manifest order, so a later (inner) region overrides an earlier
    (outer) one: BraTS paints WT -> 2, TC -> 1, ET -> 4.
    """

    value: int
    name: str
    region: str


@dataclass(frozen=True)
class Artifact:
    """One model file, pinned by its sha256."""

    file: str
    backend: str
    precision: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """A validated model manifest (schema version 2; version 1 reads with the defaults)."""

    name: str
    version: str
    dims: int
    modalities: tuple[str, ...]
    spacing_mm: tuple[float, float, float]
    orientation: str
    layout: str
    tile: tuple[int, ...] | None
    divisible_by: int
    normalization: str
    activation: str
    channels: tuple[str, ...]
    threshold: tuple[float, ...]
    labels: tuple[Label, ...]
    artifacts: tuple[Artifact, ...]
    parameters: int
    macs: int
    slice_axis: int = 2
    placeholder: bool = False
    intended_use: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None
    # -- schema 2 ------------------------------------------------------------------------
    step: float = 0.5                       # 3D: window step as a fraction of the tile (nnU-Net 0.5)
    blending: str = "gaussian"              # 3D: how overlapping windows' logits are weighted
    windows: str = "nnunet"                 # 3D: whose window placement and Gaussian (nnunet, monai)
    intensity: tuple[Intensity, ...] = ()   # one per modality, for ``clipped_zscore``
    crop: CropRule = CropRule()             # input.crop; absent: the full field of view

    def artifact(self, backend: str | None = None, precision: str | None = None) -> Artifact:
        """Return the first artifact matching ``backend`` and ``precision`` (None: any)."""
        for art in self.artifacts:
            if (backend is None or art.backend == backend) and (precision is None or art.precision == precision):
                return art
        have = ", ".join(f"{a.backend}/{a.precision}" for a in self.artifacts)
        want = f"{backend or 'any'}/{precision or 'any'}"
        raise ModelError(f"model {self.name!r} has no {want} artifact (it has: {have})")

    def artifact_path(self, art: Artifact) -> Path:
        if self.folder is None:
            raise ModelError(f"manifest of {self.name!r} was not loaded from a folder")
        return self.folder / art.file

    def thresholds(self, override: float | None = None) -> tuple[float, ...]:
        """One threshold per output channel (an override applies to all)."""
        if override is not None:
            return tuple(float(override) for _ in self.channels)
        return self.threshold

    def to_dict(self) -> dict[str, Any]:
        return to_json_dict(self)


def to_json_dict(m: Manifest) -> dict[str, Any]:
    """Serialise a manifest to the documented JSON layout."""
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "name": m.name,
        "version": m.version,
        "placeholder": m.placeholder,
        "dims": m.dims,
        "input": {
            "layout": m.layout,
            "modalities": list(m.modalities),
            "spacing_mm": list(m.spacing_mm),
            "orientation": m.orientation,
            "slice_axis": m.slice_axis,
            "tile": list(m.tile) if m.tile is not None else None,
            "divisible_by": m.divisible_by,
            "normalization": m.normalization,
            "step": m.step,
            "blending": m.blending,
            "windows": m.windows,
            **({"intensity": [asdict(i) for i in m.intensity]} if m.intensity else {}),
            "crop": m.crop.to_dict(),
        },
        "output": {
            "activation": m.activation,
            "channels": list(m.channels),
            "threshold": list(m.threshold),
            "labels": [asdict(lb) for lb in m.labels],
        },
        "artifacts": [asdict(a) for a in m.artifacts],
        "parameters": m.parameters,
        "macs": m.macs,
        "intended_use": m.intended_use,
        "provenance": m.provenance,
    }


# -- validation helpers --------------------------------------------------------------------
def _get(d: dict, key: str, where: str, kind: type | tuple[type, ...], default: Any = MISSING) -> Any:
    return typed_field(d, key, where, kind, lambda msg: ModelError(f"manifest {msg}"), default)


def _positive_finite(x: Any) -> bool:
    """A real number (not bool) that is finite and positive; huge ints are not finite floats."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x) and x > 0
    except OverflowError:
        return False


def _fail(where: str, msg: str) -> ModelError:
    return ModelError(f"manifest field '{where}' {msg}")


def parse_manifest(d: Any, folder: Path | None = None) -> Manifest:
    """Validate a manifest dictionary and return a :class:`Manifest`.

    Raises
    ------
    ModelError
        naming the first field that is missing or invalid (by its dotted path).
    """
    _check_schema(d)
    name, version = _get(d, "name", "", str), _get(d, "version", "", str)
    dims = _get(d, "dims", "", int)
    if dims not in (2, 3):
        raise _fail("dims", f"must be 2 or 3, got {dims}")
    inp = _parse_input(_get(d, "input", "", dict), dims)
    out = _parse_output(_get(d, "output", "", dict))
    arts = [_parse_artifact(a, f"artifacts[{i}]") for i, a in enumerate(_get(d, "artifacts", "", list))]
    if not arts:
        raise _fail("artifacts", "must list at least one model file")
    return Manifest(
        name=name, version=version, dims=dims, **inp, **out, artifacts=tuple(arts),
        parameters=_get(d, "parameters", "", int), macs=_get(d, "macs", "", int),
        placeholder=_get(d, "placeholder", "", bool, False),
        intended_use=_get(d, "intended_use", "", str, ""),
        provenance=check_provenance(_get(d, "provenance", "", dict, {})), folder=folder,
    )


def _check_schema(d: Any) -> None:
    if not isinstance(d, dict):
        raise ModelError("manifest must be a JSON object")
    if d.get("schema") != SCHEMA:
        raise ModelError(f"manifest field 'schema' must be {SCHEMA!r}, got {d.get('schema')!r}")
    sv = _get(d, "schema_version", "", int)
    if sv not in SUPPORTED_SCHEMA_VERSIONS:
        raise ModelError(
            f"manifest schema_version {sv} is not supported by this edge-infer "
            f"(supports {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}); upgrade edge-infer or re-export the model"
        )


def _one_of(where: str, value: Any, choices: Sequence[str], what: str = "") -> Any:
    """``value`` if it is one of ``choices``, else the field's one-line error."""
    if value not in choices:
        raise _fail(where, f"must be one of {', '.join(choices)}{what}, got {value!r}")
    return value


def _parse_input(inp: dict, dims: int) -> dict[str, Any]:
    """The ``input`` object: layout, modalities, spacing, orientation, slice axis, tile, padding, normalisation."""
    layouts = ("NCHW", "NHWC") if dims == 2 else ("NCDHW", "NDHWC")
    out: dict[str, Any] = {
        "layout": _one_of("input.layout", _get(inp, "layout", "input", str), layouts, f" for a {dims}D model"),
        "modalities": _modalities(inp), "spacing_mm": _spacing(inp), "orientation": _orientation(inp),
        "slice_axis": _get(inp, "slice_axis", "input", int, 2)}
    if out["slice_axis"] not in (0, 1, 2):
        raise _fail("input.slice_axis", f"must be 0, 1 or 2, got {out['slice_axis']}")
    out["tile"] = _tile(inp, dims)
    out["divisible_by"] = _get(inp, "divisible_by", "input", int, 1)
    if out["divisible_by"] < 1:
        raise _fail("input.divisible_by", f"must be a positive integer, got {out['divisible_by']}")
    out["normalization"] = _one_of("input.normalization", _get(inp, "normalization", "input", str), NORMALIZATIONS)
    out.update(parse_schema2_input(inp, out["normalization"], len(out["modalities"])))
    out["crop"] = parse_crop_rule(inp.get("crop"), "input.crop")
    return out


def _modalities(inp: dict) -> tuple[str, ...]:
    mods = _get(inp, "modalities", "input", list)
    if not mods or not all(isinstance(m, str) for m in mods):
        raise _fail("input.modalities", "must be a non-empty list of modality names")
    mods = tuple(m.lower() for m in mods)
    if len(set(mods)) != len(mods):
        raise _fail("input.modalities", f"lists a modality twice: {list(mods)}")
    return mods


def _spacing(inp: dict) -> tuple[float, float, float]:
    spacing = _get(inp, "spacing_mm", "input", list)
    if len(spacing) != 3 or not all(_positive_finite(s) for s in spacing):
        raise _fail("input.spacing_mm", f"must be three positive numbers, got {short_repr(spacing)}")
    return (float(spacing[0]), float(spacing[1]), float(spacing[2]))


def _orientation(inp: dict) -> str:
    code = _get(inp, "orientation", "input", str).upper()
    if len(code) != 3 or set(code) - ORIENTATION_CODES or len({_axis_of(c) for c in code}) != 3:
        raise _fail("input.orientation", f"must be a 3-letter axis code such as 'RAS' or 'LPS', got {code!r}")
    return code


def _tile(inp: dict, dims: int) -> tuple[int, ...] | None:
    raw = _get(inp, "tile", "input", (list, type(None)), None)
    if raw is None:
        if dims == 3:
            raise _fail("input.tile", "is required for a 3D model (the sliding-window patch size)")
        return None
    if len(raw) != dims or not all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in raw):
        raise _fail("input.tile", f"must be {dims} positive integers or null (dynamic), got {raw!r}")
    return tuple(raw)


def _parse_output(out: dict) -> dict[str, Any]:
    """The ``output`` object: activation, channels, thresholds (one, or one per channel), labels."""
    act = _one_of("output.activation", _get(out, "activation", "output", str), ACTIVATIONS)
    channels = _get(out, "channels", "output", list)
    if not channels or not all(isinstance(c, str) for c in channels) or len(set(channels)) != len(channels):
        raise _fail("output.channels", "must be a non-empty list of distinct region names")
    thr = _get(out, "threshold", "output", (list, int, float))
    if isinstance(thr, (int, float)) and not isinstance(thr, bool):
        thr = [float(thr)] * len(channels)
    if len(thr) != len(channels) or not all(_unit_number(t) for t in thr):
        raise _fail("output.threshold", f"must be a number in [0, 1] or one per channel ({len(channels)}), got {thr!r}")
    labels = [_parse_label(lb, f"output.labels[{i}]", channels)
              for i, lb in enumerate(_get(out, "labels", "output", list))]
    if not labels:
        raise _fail("output.labels", "must list at least one label")
    return {"activation": act, "channels": tuple(channels), "threshold": tuple(float(t) for t in thr),
            "labels": tuple(labels)}


def _unit_number(t: Any) -> bool:
    return isinstance(t, (int, float)) and not isinstance(t, bool) and 0.0 <= t <= 1.0


def _parse_label(lb: Any, where: str, channels: Sequence[str]) -> Label:
    value = _get(lb, "value", where, int)
    if not 1 <= value <= 255:
        raise _fail(where + ".value", f"must be in 1..255, got {value}")
    region = _get(lb, "region", where, str)
    if region not in channels:
        raise _fail(where + ".region", f"names {region!r}, which is not an output channel ({', '.join(channels)})")
    return Label(value=value, name=_get(lb, "name", where, str), region=region)


def _parse_artifact(a: Any, where: str) -> Artifact:
    file = _get(a, "file", where, str)
    too_long = len(file.encode("utf-8", "replace")) > 255
    if Path(file).name != file or file in ("", ".", "..") or "\x00" in file or too_long:
        raise _fail(where + ".file", f"must be a plain file name in the model folder, got {file[:80]!r}")
    backend = _one_of(where + ".backend", _get(a, "backend", where, str), tuple(BACKEND_SUFFIX))
    if not file.endswith(BACKEND_SUFFIX[backend]):
        raise _fail(where + ".file", f"{file!r} does not end in {BACKEND_SUFFIX[backend]} as a {backend} artifact must")
    precision = _one_of(where + ".precision", _get(a, "precision", where, str), PRECISIONS)
    sha = _get(a, "sha256", where, str).lower()
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise _fail(where + ".sha256", "must be 64 hexadecimal digits")
    return Artifact(file=file, backend=backend, precision=precision, sha256=sha, bytes=_get(a, "bytes", where, int))


def _axis_of(code: str) -> str:
    return {"R": "x", "L": "x", "A": "y", "P": "y", "S": "z", "I": "z"}[code]


MANIFEST_NAME = "model.json"
#: a manifest is a few kilobytes; anything larger than this is refused before parsing
MAX_MANIFEST_BYTES = 4 << 20


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate a manifest from a model folder or a ``.json`` file."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        raise ModelError(f"no model manifest at {p}: a model folder must hold {MANIFEST_NAME}")
    size = p.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise ModelError(f"model manifest {p} is {size} bytes, more than {MAX_MANIFEST_BYTES}; it is not a manifest")
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"model manifest {p} is not valid JSON ({exc})") from None
    except (RecursionError, ValueError) as exc:  # nesting too deep, integers too long
        raise ModelError(f"model manifest {p} is not usable JSON ({_first_line(exc)})") from None
    return parse_manifest(d, folder=p.parent)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_artifact(m: Manifest, art: Artifact) -> bytes:
    """Read ``art`` once and return its bytes after checking them against the pinned sha256.

    The backend is then handed these very bytes, so nothing can change the file between the
    check and the load. A symbolic link is refused: the hash pins the file in the model
    folder, not whatever a link points at. An ONNX artifact must also be self-contained (no
    tensor in external data, which the hash would not pin; see
    :func:`edge_infer.backends.onnx_wire.check_onnx_self_contained`); that is checked only after the hash
    matches, so a tampered file is always reported as tampered.
    """
    path = m.artifact_path(art)
    try:
        if path.is_symlink():
            raise IntegrityError(f"model file {path} is a symbolic link; copy the real file into the model folder")
        if not path.is_file():
            raise ModelError(f"model file {path} named in the manifest does not exist")
        content = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"model file {path.name[:80]} cannot be read: {exc.strerror or exc}") from None
    found = hashlib.sha256(content).hexdigest()
    if found != art.sha256:
        raise IntegrityError(
            f"model file {path.name} has sha256 {found} but the manifest pins {art.sha256}: "
            "the file was changed or corrupted; re-export or re-copy the model"
        )
    if art.backend == BackendName.ONNX:
        check_onnx_self_contained(path, content)
    return content


def check_artifact(m: Manifest, art: Artifact) -> Path:
    """Check ``art`` as :func:`read_artifact` does and return its path."""
    read_artifact(m, art)
    return m.artifact_path(art)
