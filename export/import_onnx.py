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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_infer.errors import EdgeInferError
from edge_infer.manifest import Manifest, load_manifest

from .byom import sample_tile
from .calibration import calibration_inputs
from .errors import SourceError, SpecError
from .model_card import write_model_card
from .model_folder import add_verification, artifact_name, pinned_artifacts, staged_folder, write_manifest
from .parity import check_parity
from .source_parity import tile_parity_block
from .spec import load_spec, spec_from_dict

IMPORT_PRECISIONS = ("fp32", "fp16", "int8")
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
                    backend: str, precisions: Sequence[str] = ("fp32",), overwrite: bool = False,
                    calibration: Sequence[str | os.PathLike] = ()) -> Manifest:
    """Wrap the ``backend`` (``onnx`` / ``tflite``) file ``src`` as the model folder ``out``.

    ``calibration``: scans (4D NIfTI, case folders, DICOM folders) for the int8 variant,
    prepared as the runtime prepares them (:mod:`export.calibration`); int8 needs them, and
    its parity against the original is then checked on their tiles instead of synthetic ones.

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
    if "int8" in precisions and not calibration:
        raise SpecError("int8 needs calibration scans: add --calibration SCAN (a case folder, 4D NIfTI or DICOM "
                        "folder) a few times, scans like the ones the model will see")
    suffix = {"onnx": ".onnx", "tflite": ".tflite"}[backend]
    if not src.is_file() or src.suffix.lower() != suffix:
        raise SourceError(f"{src} is not a {suffix} file")
    params, prov = 0, {"source_file": src.name, "exporter": f"edge-infer export import-{backend}"}
    if backend == "onnx":
        params, prov["opset"] = check_onnx_file(src)
    order = [(backend, p) for p in dict.fromkeys(("fp32", *precisions))]
    batches = calibration_inputs(calibration, spec) if calibration else []
    with staged_folder(out, overwrite) as tmp:
        shutil.copyfile(src, tmp / artifact_name(backend, "fp32"))
        derive_variants(tmp, backend, [p for _, p in order], batches)
        manifest = dataclasses.replace(spec, artifacts=pinned_artifacts(tmp, order), parameters=params,
                                       macs=_macs(tmp, backend, spec), provenance={**spec.provenance, **prov})
        manifest = write_manifest(tmp, manifest)
        x, about = _parity_input(spec, batches, len(calibration))
        try:
            report = check_parity(tmp, manifest, x)
        except EdgeInferError as exc:   # the runtime refuses its tensors or cannot run an operator
            raise SourceError(f"{src.name} does not run as the spec describes: {exc}") from None
        parity = tile_parity_block(report, ORIGINAL_RUNTIME[backend], about)
        write_model_card(tmp, add_verification(tmp, manifest, report, parity))
    return load_manifest(out)


def derive_variants(folder: Path, backend: str, precisions: Sequence[str], batches: Sequence[np.ndarray]) -> None:
    """fp16 and int8 (static, calibrated on ``batches``: QDQ for ONNX, as the zoo export) of
    ``folder``'s fp32 artifact."""
    from .onnx_export import onnx_to_fp16, onnx_to_int8
    from .tflite_export import tflite_to_fp16, tflite_to_int8

    fp32 = folder / artifact_name(backend, "fp32")
    if "fp16" in precisions:
        (onnx_to_fp16 if backend == "onnx" else tflite_to_fp16)(fp32, folder / artifact_name(backend, "fp16"))
    if "int8" in precisions:
        (onnx_to_int8 if backend == "onnx" else tflite_to_int8)(fp32, folder / artifact_name(backend, "int8"), batches)


def _parity_input(spec: Manifest, batches: Sequence[np.ndarray], scans: int) -> tuple[np.ndarray, dict]:
    """Tiles the artifacts are compared on: the calibration scans' (every other one, at most
    8), else one seeded standard-normal sample; and what the provenance says of them."""
    if batches:
        x = np.concatenate(list(batches)[::2][:8]).astype(np.float32)
        return x, {"kind": "file", "inputs": scans, "shape": list(x.shape)}
    x = np.random.default_rng(0).standard_normal((1, len(spec.modalities), *sample_tile(spec))).astype(np.float32)
    return x, {"kind": "synthetic", "shape": list(x.shape), "seed": 0}


def _macs(folder: Path, backend: str, spec: Manifest) -> int:
    """MACs per tile counted on the ONNX graph; 0 (unknown) for TFLite or a graph whose shapes do not infer."""
    if backend != "onnx":
        return 0
    from .macs import onnx_macs

    try:
        return onnx_macs(folder / "model.onnx", (1, len(spec.modalities), *sample_tile(spec)))
    except (ValueError, KeyError, TypeError):    # shapes that do not infer: the count is unknown, not wrong
        return 0
