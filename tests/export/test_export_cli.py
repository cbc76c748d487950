"""The export CLI: help for every command, one-line errors, and a tiny train -> export -> verify run."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from export.cli import cli  # noqa: E402
from export.phantoms import write_case  # noqa: E402

COMMANDS = ["train", "prune", "export", "verify", "make-default", "make-default-3d", "make-sample", "table",
            "from-torch", "import-onnx", "import-tflite"]
TINY_DATA = ["--shape", "64", "64", "32", "--phantoms", "2", "--val-phantoms", "1"]


def run(*args):
    return CliRunner().invoke(cli, ["--threads", "2", *args], catch_exceptions=False)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    res = run(command, "--help")
    assert res.exit_code == 0 and "Example" in res.output


class TestOneLineErrors:
    def test_unknown_model(self, tmp_path):
        res = run("train", "--model", "unet9d", "--out", str(tmp_path / "r"), *TINY_DATA)
        assert res.exit_code == 2
        assert "unknown model 'unet9d'; valid names:" in res.output
        assert res.output.count("\n") == 1
        assert not (tmp_path / "r").exists()

    def test_missing_modality(self, tmp_path):
        case = write_case(tmp_path / "data", "C1", shape=(32, 32, 16), seed=0)
        (case / "C1_t1ce.nii.gz").unlink()
        res = run("train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r"), "--steps", "1")
        assert res.exit_code == 2 and "has no C1_t1ce.nii.gz" in res.output
        assert not (tmp_path / "r").exists()

    def test_mismatched_grid(self, tmp_path):
        import nibabel as nib

        case = write_case(tmp_path / "data", "C2", shape=(32, 32, 16), seed=0)
        nib.save(nib.Nifti1Image(np.zeros((32, 32, 12), np.int16), np.eye(4)), case / "C2_flair.nii.gz")
        res = run("train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "r"), "--steps", "1")
        assert res.exit_code == 2 and "not on the grid" in res.output

    def test_missing_checkpoint(self, tmp_path):
        res = run("export", str(tmp_path / "missing.pt"), str(tmp_path / "m"))
        assert res.exit_code == 2 and "does not exist" in res.output
        assert not (tmp_path / "m").exists()


def test_train_export_verify(tmp_path):
    res = run("train", "--model", "flat_unet2d", "--set", "features=4", "--set", "depth=2", "--steps", "3",
              "--batch", "2", "--tile", "32", "--tile", "32", "--out", str(tmp_path / "run"), *TINY_DATA)
    assert res.exit_code == 0, res.output
    ckpt = tmp_path / "run" / "checkpoint.pt"
    summary = json.loads((tmp_path / "run" / "train.json").read_text())
    assert len(summary["losses"]) == 3 and 0 < summary["threshold_sweep"]["global"] < 1

    res = run("export", str(ckpt), str(tmp_path / "model"), "--backend", "onnx", "--verify-phantoms", "1")
    assert res.exit_code == 0, res.output
    assert "onnx/fp32" in res.output and "PASS" in res.output
    manifest = json.loads((tmp_path / "model" / "model.json").read_text())
    assert manifest["input"]["tile"] is None          # ONNX-only 2D export is dynamic
    assert manifest["output"]["threshold"][0] == summary["threshold_sweep"]["global"]

    res = run("verify", str(tmp_path / "model"), str(ckpt), "--phantoms", "1")
    assert res.exit_code == 0 and "PASS" in res.output

    res = run("export", str(ckpt), str(tmp_path / "model"), "--backend", "onnx")
    assert res.exit_code == 2 and "exists" in res.output


def test_make_sample(tmp_path):
    res = run("make-sample", "--out", str(tmp_path / "s"), "--slices", "8")
    assert res.exit_code == 0
    names = sorted(p.name for p in (tmp_path / "s").glob("*.nii.gz"))
    assert names == ["sample_flair.nii.gz", "sample_seg.nii.gz", "sample_t1.nii.gz", "sample_t1ce.nii.gz", "sample_t2.nii.gz"]
