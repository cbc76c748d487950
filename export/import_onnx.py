"""Import an ONNX or TFLite model exported elsewhere: check it, pin it, derive fp16, run it.

The file is copied byte for byte as the fp32 artifact (its sha256 pinned in the manifest);
``onnx.checker`` must pass and no tensor may live in external data. The input and output
tensors are then checked against the spec by the runtime itself, exactly as a device checks
them when it loads the model (rank, channels, fixed tile), and every artifact runs once
(:func:`export.parity.check_parity`, fp16 against fp32) before the folder gets its name.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_infer.errors import EdgeInferError
from edge_infer.manifest import Manifest, load_manifest

from .byom import sample_tile
from .errors import SourceError, SpecError
from .model_folder import add_verification, artifact_name, pinned_artifacts, staged_folder, write_manifest
from .model_card import write_model_card
from .parity import check_parity
from .source_parity import tile_parity_block
from .spec import load_spec, spec_from_dict

IMPORT_PRECISIONS = ("fp32", "fp16")
#: the reference of an import's parity figures: the original file, run by the runtime's backend
ORIGINAL_RUNTIME = {"onnx": "onnxruntime of the original file", "tflite": "LiteRT of the original file"}


def check_onnx_file(src: Path) -> tuple[int, int]:
    """``onnx.checker`` and the external-data refusal; returns ``(parameters, opset)``."""
    import onnx
    from edge_infer.backends.onnx_wire import check_onnx_self_contained

    content = src.read_bytes()
    try:
        check_onnx_self_contained(src, content)
    except EdgeInferError as exc:
        raise SourceError(f"{exc}; re-save it as one file: onnx.save(model, path, save_as_external_data=False)") from None
    try:
        proto = onnx.load_from_string(content)
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # DecodeError, ValidationError, InferenceError
        raise SourceError(f"{src.name} fails onnx.checker: {str(exc).strip().splitlines()[0][:200]}") from None
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    opset = max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return params, opset


def import_artifact(src: str | os.PathLike, out: str | os.PathLike, spec: Manifest | dict | str | os.PathLike,
                    backend: str, precisions: Sequence[str] = ("fp32",), overwrite: bool = False) -> Manifest:
    """Wrap the ``backend`` (``onnx`` / ``tflite``) file ``src`` as the model folder ``out``.

    Raises
    ------
    SpecError, SourceError, ParityError
        one line each; nothing is left at ``out``.
    """
    src = Path(src)
    spec = spec if isinstance(spec, Manifest) else spec_from_dict(spec) if isinstance(spec, dict) else load_spec(spec)
    bad = [p for p in precisions if p not in IMPORT_PRECISIONS]
    if bad:
        raise SpecError(f"precision {bad[0]!r} cannot be derived on import; choose from {', '.join(IMPORT_PRECISIONS)}")
    suffix = {"onnx": ".onnx", "tflite": ".tflite"}[backend]
    if not src.is_file() or src.suffix.lower() != suffix:
        raise SourceError(f"{src} is not a {suffix} file")
    params, prov = 0, {"source_file": src.name, "exporter": f"edge-infer export import-{backend}"}
    if backend == "onnx":
        params, prov["opset"] = check_onnx_file(src)
    order = [(backend, p) for p in dict.fromkeys(("fp32", *precisions))]
    with staged_folder(out, overwrite) as tmp:
        shutil.copyfile(src, tmp / artifact_name(backend, "fp32"))
        if ("onnx", "fp16") in order:
            from .onnx_export import onnx_to_fp16

            onnx_to_fp16(tmp / "model.onnx", tmp / artifact_name("onnx", "fp16"))
        elif (backend, "fp16") in order:
            from .tflite_export import tflite_to_fp16

            tflite_to_fp16(tmp / "model.tflite", tmp / artifact_name("tflite", "fp16"))
        manifest = dataclasses.replace(spec, artifacts=pinned_artifacts(tmp, order), parameters=params,
                                       macs=_macs(tmp, backend, spec), provenance={**spec.provenance, **prov})
        manifest = write_manifest(tmp, manifest)
        x = np.random.default_rng(0).standard_normal((1, len(spec.modalities), *sample_tile(spec))).astype(np.float32)
        try:
            report = check_parity(tmp, manifest, x)
        except EdgeInferError as exc:   # the runtime refuses its tensors or cannot run an operator
            raise SourceError(f"{src.name} does not run as the spec describes: {exc}") from None
        parity = tile_parity_block(report, ORIGINAL_RUNTIME[backend],
                                   {"kind": "synthetic", "shape": list(x.shape), "seed": 0})
        write_model_card(tmp, add_verification(tmp, manifest, report, parity))
    return load_manifest(out)


def _macs(folder: Path, backend: str, spec: Manifest) -> int:
    """MACs per tile counted on the ONNX graph; 0 (unknown) for TFLite or a graph whose shapes do not infer."""
    if backend != "onnx":
        return 0
    from .macs import onnx_macs

    try:
        return onnx_macs(folder / "model.onnx", (1, len(spec.modalities), *sample_tile(spec)))
    except (ValueError, KeyError, TypeError):    # shapes that do not infer: the count is unknown, not wrong
        return 0
