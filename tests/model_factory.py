"""Tiny real models for tests, built with onnx's helper API (no torch), plus manifests.

The "rule" models are convolutions with fixed weights: each output region is a smoothed,
scaled copy of one input modality minus a bias, so masks are meaningful on phantoms
(WT from FLAIR, TC from T2, ET from T1ce) and tests can check geometry, not noise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_infer.manifest import Artifact, Label, Manifest, sha256_file, to_json_dict

MODALITIES = ("t1", "t1ce", "t2", "flair")
CHANNELS = ("WT", "TC", "ET")
BRATS_LABELS = (Label(2, "edema", "WT"), Label(1, "necrotic core", "TC"), Label(4, "enhancing tumour", "ET"))
#: (output channel <- input modality index, gain, bias): z-scored intensities above ~1.3 light up
RULES = ((3, 4.0, -5.0), (2, 4.0, -6.0), (1, 4.0, -6.5))


def rule_weights(dims: int, k: int = 3, in_ch: int = 4) -> tuple[np.ndarray, np.ndarray]:
    w = np.zeros((len(RULES), in_ch) + (k,) * dims, dtype=np.float32)
    b = np.zeros(len(RULES), dtype=np.float32)
    for o, (src, gain, bias) in enumerate(RULES):
        w[o, min(src, in_ch - 1)] = gain / k**dims
        b[o] = bias
    return w, b


def conv_model(dims: int = 2, tile: Sequence[int] | None = None, in_ch: int = 4, out_ch: int = 3,
               weights: tuple[np.ndarray, np.ndarray] | None = None, opset: int = 17) -> onnx.ModelProto:
    """One same-padded 3x3 (x3) convolution; batch dynamic; spatial dims dynamic or ``tile``."""
    w, b = weights if weights is not None else rule_weights(dims, in_ch=in_ch)
    spatial = list(tile) if tile is not None else [f"s{i}" for i in range(dims)]
    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", in_ch, *spatial])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", out_ch, *spatial])
    node = helper.make_node("Conv", ["image", "W", "B"], ["logits"], kernel_shape=[3] * dims, pads=[1] * (2 * dims))
    graph = helper.make_graph([node], "rule", [x], [y], [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(folder: Path, model: onnx.ModelProto | None = None, *, dims: int = 2, tile=None,
                spacing=(1.0, 1.0, 1.0), orientation: str = "RAS", divisible_by: int = 1,
                threshold=0.5, extra_artifacts: Sequence[tuple[Path, str, str]] = (), name: str = "test-rule",
                overrides: dict | None = None, layout: str | None = None) -> Path:
    """Write ``model.onnx`` and a matching ``model.json`` into ``folder``; return the folder.

    ``overrides`` replaces top-level or nested manifest fields after building it (to make
    deliberately wrong manifests); ``extra_artifacts`` adds (path in folder, backend, precision).
    """
    folder.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else conv_model(dims, tile)
    onnx.save(model, folder / "model.onnx")
    arts = [("model.onnx", "onnx", "fp32"), *[(Path(p).name, be, pr) for p, be, pr in extra_artifacts]]
    artifacts = tuple(Artifact(f, be, pr, sha256_file(folder / f), (folder / f).stat().st_size) for f, be, pr in arts)
    m = Manifest(
        name=name, version="0.0.1", dims=dims, modalities=MODALITIES, spacing_mm=tuple(spacing),
        orientation=orientation, layout=layout or ("NCHW" if dims == 2 else "NCDHW"),
        tile=tuple(tile) if tile is not None else None, divisible_by=divisible_by,
        normalization="zscore_nonzero", activation="sigmoid", channels=CHANNELS,
        threshold=(threshold,) * 3 if isinstance(threshold, float) else tuple(threshold),
        labels=BRATS_LABELS, artifacts=artifacts, parameters=int(4 * 3 * 3**dims + 3),
        macs=0, intended_use="tests only",
    )
    d = to_json_dict(m)
    for key, value in (overrides or {}).items():
        target = d
        parts = key.split(".")
        for p in parts[:-1]:
            target = target[p]
        target[parts[-1]] = value
    (folder / "model.json").write_text(json.dumps(d, indent=2))
    return folder
