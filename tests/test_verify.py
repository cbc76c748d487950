"""`verify_model` and its typed result."""

from __future__ import annotations

from edge_infer.verify import ArtifactCheck, VerifyResult, verify_model


class TestVerifyResult:
    def test_one_failed_artifact_fails_the_model(self):
        result = VerifyResult("m", "1", [ArtifactCheck("a.onnx", "onnx", "fp32", status="ok", line="a ok"),
                                         ArtifactCheck("b.tflite", "tflite", "fp32", status="skipped", line="b")])
        assert result.ok and result.lines == ["manifest: m 1, schema ok", "a ok", "b", "verified"]
        result.artifacts.append(ArtifactCheck("c.onnx", "onnx", "int8", error="bad", line="c FAILED"))
        assert not result.ok and result.lines[-1] == "verification failed"
        assert result.to_dict()["artifacts"][-1] == {"file": "c.onnx", "backend": "onnx", "precision": "int8",
                                                     "status": "failed", "error": "bad"}


class TestVerifyModel:
    def test_a_tampered_artifact_fails_by_name(self, model2d, tmp_path):
        import shutil

        folder = shutil.copytree(model2d, tmp_path / "m")
        art = next(folder.glob("*.onnx"))
        art.write_bytes(art.read_bytes() + b"x")
        result = verify_model(folder)
        assert not result.ok and result.artifacts[0].status == "failed" and "sha256" in result.artifacts[0].error
