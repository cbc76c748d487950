"""Every model exports to ONNX and TFLite, and the runtime's output matches PyTorch."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edge_infer.manifest import load_manifest  # noqa: E402
from edge_infer.model import load_model  # noqa: E402
from export.model_folder import ExportSpec, export_folder  # noqa: E402
from export.zoo import create_model  # noqa: E402

from export_helpers import TINY, tiny_shape  # noqa: E402


def _tiny_model(name):
    torch.manual_seed(0)
    model = create_model(name, **TINY[name]).eval()
    # non-trivial batch-norm statistics, so folding them is exercised
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _export(tmp_path, name, backend):
    model = _tiny_model(name)
    spec = ExportSpec(name=f"tiny-{name}", backends=(backend,), tile=tiny_shape(model.info.dims)[1:])
    export_folder(model, tmp_path / name, spec)
    return model


def _check_runtime_matches(folder, model, backend, batch=3):
    loaded = load_model(folder, backend=backend, threads=1)
    x = np.random.default_rng(0).standard_normal((batch, *tiny_shape(model.info.dims))).astype(np.float32)
    got = loaded.backend.run(x)
    want = model(torch.from_numpy(x)).detach().numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() < 1e-4


@pytest.mark.parametrize("name", sorted(TINY))
class TestOnnx:
    def test_runtime_matches_pytorch(self, tmp_path, name):
        model = _export(tmp_path, name, "onnx")
        folder = tmp_path / name
        manifest = load_manifest(folder)
        assert manifest.artifact("onnx", "fp32").file == "model.onnx"
        assert manifest.parameters == sum(p.numel() for p in model.parameters())
        assert manifest.macs > 0
        _check_runtime_matches(folder, model, "onnx")
        if model.info.dims == 2:       # spatial axes are dynamic in the ONNX graph
            loaded = load_model(folder, backend="onnx", threads=1)
            x = np.zeros((1, 4, 64, 48), np.float32)
            assert loaded.backend.run(x).shape == (1, 3, 64, 48)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TINY))
class TestTflite:
    def test_runtime_matches_pytorch(self, tmp_path, name):
        model = _export(tmp_path, name, "tflite")
        _check_runtime_matches(tmp_path / name, model, "tflite")


class TestTfliteFp16:
    """A TFLite 'fp16' file the quantizer cast nothing in (CONV_3D) is not shipped as fp16."""

    @pytest.mark.parametrize("name,made", [("flat_unet2d", True), ("flat_unet3d", False)])
    def test_made_only_when_weights_are_cast(self, tmp_path, name, made):
        pytest.importorskip("ai_edge_quantizer")
        model = _tiny_model(name)
        spec = ExportSpec(name=f"tiny-{name}", backends=("tflite",), precisions=("fp32", "fp16"),
                          tile=tiny_shape(model.info.dims)[1:])
        manifest = export_folder(model, tmp_path / name, spec)
        have = {(a.backend, a.precision) for a in manifest.artifacts}
        assert (("tflite", "fp16") in have) is made
        assert (tmp_path / name / "model_fp16.tflite").exists() is made
        assert ("not_made" in manifest.provenance) is not made
        if not made:
            assert "CONV_3D" in manifest.provenance["not_made"]["tflite/fp16"]
