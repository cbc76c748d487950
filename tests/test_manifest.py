"""Tests of edge_infer.manifest: validation field by field, hashing, artifact checks."""

from __future__ import annotations

import json
import os

import pytest

from edge_infer.errors import IntegrityError, ModelError
from edge_infer.manifest import SCHEMA_VERSION, check_artifact, load_manifest, parse_manifest, sha256_file
from model_factory import write_model


def manifest_dict(folder):
    return json.loads((folder / "model.json").read_text())


class TestParseManifest:
    def test_round_trip(self, model2d):
        m = load_manifest(model2d)
        again = parse_manifest(m.to_dict(), folder=model2d)
        assert again == m
        assert m.modalities == ("t1", "t1ce", "t2", "flair")
        assert [lb.value for lb in m.labels] == [2, 1, 4]

    @pytest.mark.parametrize(
        "key, value, match",
        [
            ("dims", 4, "'dims' must be 2 or 3"),
            ("schema_version", SCHEMA_VERSION + 1, f"schema_version {SCHEMA_VERSION + 1} is not supported"),
            ("schema_version", 0, "schema_version 0 is not supported"),
            ("schema", "other", "'schema' must be"),
            ("input.layout", "NHWCX", "input.layout"),
            ("input.modalities", ["t1", "t1"], "lists a modality twice"),
            ("input.spacing_mm", [1, 1], "three positive numbers"),
            ("input.spacing_mm", [1, 0, 1], "three positive numbers"),
            ("input.orientation", "RRS", "3-letter axis code"),
            ("input.normalization", "whiten", "input.normalization"),
            ("output.activation", "relu", "output.activation"),
            ("output.threshold", 1.5, "output.threshold"),
            ("output.threshold", [0.5, 0.5], "one per channel"),
            ("artifacts", [], "at least one model file"),
            ("parameters", "many", "'parameters' must be an integer"),
            ("dims", True, "'dims' must be an integer"),
        ],
    )
    def test_invalid_field_is_named(self, model2d, key, value, match):
        d = manifest_dict(model2d)
        target = d
        parts = key.split(".")
        for p in parts[:-1]:
            target = target[p]
        target[parts[-1]] = value
        with pytest.raises(ModelError, match=match):
            parse_manifest(d)

    def test_missing_field(self, model2d):
        d = manifest_dict(model2d)
        del d["output"]["labels"]
        with pytest.raises(ModelError, match="missing field 'output.labels'"):
            parse_manifest(d)

    def test_label_region_must_be_a_channel(self, model2d):
        d = manifest_dict(model2d)
        d["output"]["labels"][0]["region"] = "XX"
        with pytest.raises(ModelError, match=r"labels\[0\].region.*not an output channel"):
            parse_manifest(d)

    @pytest.mark.parametrize("file", ["../model.onnx", "/etc/passwd.onnx", "sub/model.onnx"])
    def test_artifact_file_must_be_plain_name(self, model2d, file):
        d = manifest_dict(model2d)
        d["artifacts"][0]["file"] = file
        with pytest.raises(ModelError, match="plain file name"):
            parse_manifest(d)

    def test_artifact_suffix_matches_backend(self, model2d):
        d = manifest_dict(model2d)
        d["artifacts"][0]["backend"] = "tflite"
        with pytest.raises(ModelError, match="does not end in .tflite"):
            parse_manifest(d)

    def test_3d_needs_tile(self, model3d):
        d = manifest_dict(model3d)
        d["input"]["tile"] = None
        with pytest.raises(ModelError, match="required for a 3D model"):
            parse_manifest(d)


class TestSchema2Fields:
    """Schema 2: ``input.step``, ``input.blending``, ``input.intensity``; version 1 still reads."""

    def test_version1_reads_with_defaults(self, model2d):
        d = manifest_dict(model2d)
        d["schema_version"] = 1
        for key in ("step", "blending", "windows", "intensity"):
            d["input"].pop(key, None)
        m = parse_manifest(d)
        assert (m.step, m.blending, m.windows, m.intensity) == (0.5, "gaussian", "nnunet", ())

    def test_round_trip_of_new_fields(self, model2d):
        d = manifest_dict(model2d)
        d["input"].update(step=0.25, blending="constant", windows="monai", normalization="clipped_zscore",
                          intensity=[{"low": -100, "high": 200 + i, "mean": 40, "std": 50} for i in range(4)])
        m = parse_manifest(d)
        assert (m.step, m.blending, m.windows, m.intensity[3].high) == (0.25, "constant", "monai", 203.0)
        assert parse_manifest(m.to_dict()) == m

    @pytest.mark.parametrize("key, value, match", [
        ("step", 0, "'input.step' must be a fraction"),
        ("step", 1.5, "'input.step' must be a fraction"),
        ("step", True, "'input.step' must be"),
        ("blending", "max", "'input.blending' must be one of gaussian, constant"),
        ("windows", "holoscan", "'input.windows' must be one of nnunet, monai"),
        ("intensity", [{"low": 0, "high": 1, "mean": 0, "std": 1}], "one entry per modality"),
        ("intensity", [{"low": 2, "high": 1, "mean": 0, "std": 1}] * 4, r"input.intensity\[0\]' needs low <= high"),
        ("intensity", [{"low": 0, "high": 1, "mean": 0}] * 4, r"missing field 'input.intensity\[0\].std'"),
    ])
    def test_invalid_new_field_is_named(self, model2d, key, value, match):
        d = manifest_dict(model2d)
        d["input"][key] = value
        with pytest.raises(ModelError, match=match):
            parse_manifest(d)

    def test_clipped_zscore_needs_intensity(self, model2d):
        d = manifest_dict(model2d)
        d["input"]["normalization"] = "clipped_zscore"
        with pytest.raises(ModelError, match="'input.intensity' is required by clipped_zscore"):
            parse_manifest(d)


class TestLoadManifest:
    def test_missing(self, tmp_path):
        with pytest.raises(ModelError, match="no model manifest"):
            load_manifest(tmp_path)

    def test_not_json(self, tmp_path):
        (tmp_path / "model.json").write_text("{not json")
        with pytest.raises(ModelError, match="not valid JSON"):
            load_manifest(tmp_path)


class TestCheckArtifact:
    def test_ok(self, model2d):
        m = load_manifest(model2d)
        assert check_artifact(m, m.artifacts[0]) == model2d / "model.onnx"

    def test_tampered(self, tmp_path):
        folder = write_model(tmp_path / "m")
        m = load_manifest(folder)
        with open(folder / "model.onnx", "ab") as f:
            f.write(b"\0")
        found = sha256_file(folder / "model.onnx")
        with pytest.raises(IntegrityError, match=f"sha256 {found} but the manifest pins {m.artifacts[0].sha256}"):
            check_artifact(m, m.artifacts[0])

    def test_symlink_refused(self, tmp_path):
        folder = write_model(tmp_path / "m")
        real = tmp_path / "elsewhere.onnx"
        os.replace(folder / "model.onnx", real)
        os.symlink(real, folder / "model.onnx")
        m = load_manifest(folder)
        with pytest.raises(IntegrityError, match="symbolic link"):
            check_artifact(m, m.artifacts[0])

    def test_missing_file(self, tmp_path):
        folder = write_model(tmp_path / "m")
        (folder / "model.onnx").unlink()
        m = load_manifest(folder)
        with pytest.raises(ModelError, match="does not exist"):
            check_artifact(m, m.artifacts[0])
