"""Tests of edge_infer.model: resolving, verifying and loading models against manifests."""

from __future__ import annotations

import numpy as np
import pytest

from edge_infer.errors import IntegrityError, ModelError
from edge_infer.model import load_model, resolve_model
from model_factory import conv_model, write_model


class TestResolveModel:
    def test_path(self, model2d):
        assert resolve_model(str(model2d)) == model2d

    def test_unknown_lists_bundled(self):
        with pytest.raises(ModelError, match="no model 'nope'.*bundled name"):
            resolve_model("nope")


class TestLoadModel:
    def test_runs(self, model2d):
        lm = load_model(model2d, threads=1)
        y = lm.backend.run(np.zeros((3, 4, 16, 16), np.float32))
        assert y.shape == (3, 3, 16, 16) and y.dtype == np.float32
        assert lm.describe()["sha256"] == lm.artifact.sha256

    def test_wrong_channel_count(self, tmp_path):
        folder = write_model(tmp_path / "m", conv_model(2, in_ch=3))
        with pytest.raises(ModelError, match="takes 3 input channels but the manifest lists 4"):
            load_model(folder)

    def test_wrong_output_count(self, tmp_path):
        w = np.zeros((2, 4, 3, 3), np.float32), np.zeros(2, np.float32)
        folder = write_model(tmp_path / "m", conv_model(2, out_ch=2, weights=w))
        with pytest.raises(ModelError, match="gives 2 output channels but the manifest lists 3"):
            load_model(folder)

    def test_wrong_dims(self, tmp_path):
        folder = write_model(tmp_path / "m", conv_model(3, tile=(8, 8, 8)), dims=2)
        with pytest.raises(ModelError, match="manifest does not belong to this model"):
            load_model(folder)

    def test_tile_mismatch(self, tmp_path):
        folder = write_model(tmp_path / "m", conv_model(3, tile=(8, 8, 8)), dims=3, tile=(16, 16, 16))
        with pytest.raises(ModelError, match="manifest's tile is"):
            load_model(folder)

    def test_hash_checked_before_loading(self, tmp_path):
        folder = write_model(tmp_path / "m")
        (folder / "model.onnx").write_bytes(b"garbage that onnxruntime would choke on")
        with pytest.raises(IntegrityError, match="sha256"):
            load_model(folder)

    def test_not_a_model(self, tmp_path):
        folder = write_model(tmp_path / "m")
        import json

        from edge_infer.manifest import sha256_file

        (folder / "model.onnx").write_bytes(b"this is not an onnx file")
        d = json.loads((folder / "model.json").read_text())
        d["artifacts"][0]["sha256"] = sha256_file(folder / "model.onnx")
        (folder / "model.json").write_text(json.dumps(d))
        with pytest.raises(ModelError, match="onnxruntime cannot load model.onnx"):
            load_model(folder)

    def test_missing_precision_lists_available(self, model2d):
        with pytest.raises(ModelError, match="no onnx/int8 artifact.*onnx/fp32"):
            load_model(model2d, backend="onnx", precision="int8")
