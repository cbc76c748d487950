"""End-to-end tests of the edge-infer CLI (click's CliRunner and a real subprocess)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from edge_infer.cli import main
from edge_infer.manifest import SCHEMA_VERSION
from model_factory import write_model

MODS = ("t1", "t1ce", "t2", "flair")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def assert_user_error(result, match, out_dir=None):
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert match in lines[0], lines[0]
    assert "Traceback" not in result.output
    if out_dir is not None:
        assert not out_dir.exists() or not any(out_dir.iterdir())


class TestHelp:
    @pytest.mark.parametrize("cmd", [name for name in main.commands])
    def test_every_command_has_help_with_example(self, cmd):
        r = invoke(cmd, "--help")
        assert r.exit_code == 0
        assert "Example" in r.output and "edge-infer " + cmd in r.output

    def test_version(self):
        assert invoke("--version").output.startswith("edge-infer, version")


class TestRun:
    def test_brats_folder(self, case_dir, model2d, tmp_path):
        r = invoke("run", case_dir, "-o", tmp_path / "out", "--model", model2d, "--overlay")
        assert r.exit_code == 0, r.output
        assert "mask:" in r.stdout and "volumes:" in r.stdout
        assert {p.name for p in (tmp_path / "out").iterdir()} == {"case_mask.nii.gz", "case_report.json", "case_overlay.png"}

    def test_json_report(self, case_dir, model2d, tmp_path):
        r = invoke("run", case_dir, "-o", tmp_path, "--model", model2d, "--json")
        assert r.exit_code == 0
        report = json.loads(r.stdout)
        assert report["model"]["name"] == "test-rule"
        assert report["plan"]["mode"] == "slices"
        assert report["geometry"]["shape"] == [64, 64, 32]
        assert json.loads((tmp_path / "case_report.json").read_text())["provenance"] == report["provenance"]

    def test_explicit_modality_flags(self, case_dir, model2d, tmp_path):
        args = [f"--{m}={case_dir / f'case_{m}.nii.gz'}" for m in MODS]
        r = invoke("run", *args, "-o", tmp_path, "--model", model2d, "--name", "mine", "-q")
        assert r.exit_code == 0 and r.stdout == ""
        assert (tmp_path / "mine_mask.nii.gz").is_file()

    @pytest.mark.parametrize("flag, shown", [(None, False), ("--progress", True), ("--no-progress", False)])
    def test_progress_bar_only_on_a_terminal_unless_forced(self, case_dir, model2d, tmp_path, flag, shown):
        """CliRunner's stderr is not a terminal: no bar unless --progress forces one."""
        r = invoke("run", case_dir, "-o", tmp_path, "--model", model2d, *([flag] if flag else []))
        assert r.exit_code == 0, r.output
        assert ("/32 [" in r.stderr) is shown, r.stderr  # tqdm's "8/32 [00:00<...]" over the 32 slices

    def test_real_subprocess_quiet(self, case_dir, model2d, tmp_path):
        p = subprocess.run([sys.executable, "-m", "edge_infer.cli", "run", str(case_dir), "-o", str(tmp_path),
                            "--model", str(model2d), "-q"], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert (tmp_path / "case_mask.nii.gz").is_file()


class TestBadInput:
    def test_missing_file(self, model2d, tmp_path):
        assert_user_error(invoke("run", tmp_path / "nope.nii.gz", "-o", tmp_path / "o", "--model", model2d),
                          "does not exist", tmp_path / "o")

    def test_empty_file(self, model2d, tmp_path):
        (tmp_path / "x.nii.gz").write_bytes(b"")
        assert_user_error(invoke("run", tmp_path / "x.nii.gz", "-o", tmp_path / "o", "--model", model2d),
                          "is empty", tmp_path / "o")

    def test_not_nifti_nor_dicom(self, model2d, tmp_path):
        (tmp_path / "x.txt").write_text("hello")
        assert_user_error(invoke("run", tmp_path / "x.txt", "-o", tmp_path / "o", "--model", model2d),
                          "neither NIfTI", tmp_path / "o")

    def test_folder_of_junk(self, model2d, tmp_path):
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "a.txt").write_text("hello")
        assert_user_error(invoke("run", tmp_path / "in", "-o", tmp_path / "o", "--model", model2d),
                          "no DICOM", tmp_path / "o")

    def test_truncated(self, case_dir, model2d, tmp_path):
        for m in MODS:
            shutil.copy(case_dir / f"case_{m}.nii.gz", tmp_path)
        raw = (tmp_path / "case_t2.nii.gz").read_bytes()
        (tmp_path / "case_t2.nii.gz").write_bytes(raw[: len(raw) // 3])
        assert_user_error(invoke("run", tmp_path, "-o", tmp_path / "o", "--model", model2d),
                          "truncated or corrupt", tmp_path / "o")

    def test_nan(self, case_dir, model2d, tmp_path):
        for m in MODS:
            shutil.copy(case_dir / f"case_{m}.nii.gz", tmp_path)
        img = nib.load(case_dir / "case_t1.nii.gz")
        data = np.asarray(img.dataobj).astype(np.float32)
        data[3, 3, 3] = np.nan
        nib.save(nib.Nifti1Image(data, img.affine), tmp_path / "case_t1.nii.gz")
        assert_user_error(invoke("run", tmp_path, "-o", tmp_path / "o", "--model", model2d),
                          "NaN or infinite", tmp_path / "o")

    def test_missing_modality(self, case_dir, model2d, tmp_path):
        for m in MODS[:3]:
            shutil.copy(case_dir / f"case_{m}.nii.gz", tmp_path)
        assert_user_error(invoke("run", tmp_path, "-o", tmp_path / "o", "--model", model2d), "lacks flair", tmp_path / "o")

    def test_duplicated_modality(self, case_dir, model2d, tmp_path):
        for m in MODS:
            shutil.copy(case_dir / f"case_{m}.nii.gz", tmp_path)
        shutil.copy(case_dir / "case_t1.nii.gz", tmp_path / "other_t1.nii.gz")
        assert_user_error(invoke("run", tmp_path, "-o", tmp_path / "o", "--model", model2d), "several t1 files", tmp_path / "o")

    def test_extra_modality_file(self, case_dir, model2d, tmp_path):
        args = [case_dir / f"case_{m}.nii.gz" for m in MODS] + [case_dir / "case_seg.nii.gz"]
        assert_user_error(invoke("run", *args, "-o", tmp_path / "o", "--model", model2d),
                          "cannot tell the modality of case_seg.nii.gz", tmp_path / "o")

    def test_different_grids(self, case_dir, model2d, tmp_path):
        for m in MODS:
            shutil.copy(case_dir / f"case_{m}.nii.gz", tmp_path)
        img = nib.load(case_dir / "case_t1ce.nii.gz")
        nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::2], img.affine), tmp_path / "case_t1ce.nii.gz")
        assert_user_error(invoke("run", tmp_path, "-o", tmp_path / "o", "--model", model2d),
                          "not on one grid: t1ce is 32x64x32", tmp_path / "o")

    def test_single_2d_image(self, model2d, tmp_path):
        nib.save(nib.Nifti1Image(np.ones((32, 32, 1, 4), np.float32), np.eye(4)), tmp_path / "x.nii.gz")
        assert_user_error(invoke("run", tmp_path / "x.nii.gz", "-o", tmp_path / "o", "--model", model2d),
                          "too few slices", tmp_path / "o")

    def test_too_few_slices_for_3d_model(self, model3d, tmp_path):
        nib.save(nib.Nifti1Image(np.ones((32, 32, 4, 4), np.float32), np.eye(4)), tmp_path / "x.nii.gz")
        assert_user_error(invoke("run", tmp_path / "x.nii.gz", "-o", tmp_path / "o", "--model", model3d),
                          "the 3D model needs at least 8", tmp_path / "o")

    def test_huge_header(self, model2d, tmp_path):
        hdr = nib.Nifti1Header()
        hdr.set_data_shape((30000, 30000, 30000, 4))
        hdr.set_data_dtype(np.int16)
        (tmp_path / "x.nii").write_bytes(hdr.binaryblock + b"\0" * 1028)
        assert_user_error(invoke("run", tmp_path / "x.nii", "-o", tmp_path / "o", "--model", model2d),
                          "more than this machine can hold", tmp_path / "o")

    def test_manifest_does_not_match_model(self, case_dir, tmp_path):
        folder = write_model(tmp_path / "m", overrides={"input.modalities": ["t1", "t2", "flair"]})
        assert_user_error(invoke("run", case_dir, "-o", tmp_path / "o", "--model", folder),
                          "takes 4 input channels but the manifest lists 3", tmp_path / "o")

    def test_tampered_model(self, case_dir, tmp_path):
        folder = write_model(tmp_path / "m")
        with open(folder / "model.onnx", "ab") as f:
            f.write(b"x")
        assert_user_error(invoke("run", case_dir, "-o", tmp_path / "o", "--model", folder),
                          "but the manifest pins", tmp_path / "o")

    def test_output_is_a_file(self, case_dir, model2d, tmp_path):
        (tmp_path / "o").write_text("x")
        r = invoke("run", case_dir, "-o", tmp_path / "o", "--model", model2d)
        assert r.exit_code == 2 and "is a file" in r.stderr and (tmp_path / "o").read_text() == "x"

    def test_bad_series_rule(self, case_dir, model2d, tmp_path):
        r = invoke("run", case_dir, "--series-rule", "nonsense", "-o", tmp_path, "--model", model2d)
        assert r.exit_code == 2 and "MODALITY=REGEX" in r.output

    def test_debug_shows_traceback(self, model2d, tmp_path):
        r = CliRunner().invoke(main, ["--debug", "run", str(tmp_path / "nope.nii.gz"), "--model", str(model2d)])
        assert r.exit_code == 2 and "Traceback" in r.stderr


class TestInfoModelsVerify:
    def test_info(self, model2d):
        r = invoke("info", model2d)
        assert r.exit_code == 0 and "test-rule 0.0.1" in r.stdout and "(verified)" in r.stdout

    def test_info_json(self, model2d):
        d = json.loads(invoke("info", model2d, "--json").stdout)
        assert d["schema_version"] == SCHEMA_VERSION

    def test_info_tampered(self, tmp_path):
        folder = write_model(tmp_path / "m")
        (folder / "model.onnx").write_bytes(b"changed")
        assert_user_error(invoke("info", folder), "but the manifest pins")

    def test_verify_ok(self, model2d):
        r = invoke("verify", model2d)
        assert r.exit_code == 0 and "verified" in r.stdout.splitlines()[-1]

    def test_verify_fails_on_mismatch(self, tmp_path):
        folder = write_model(tmp_path / "m", overrides={"output.channels": ["WT", "TC"], "output.threshold": [0.5, 0.5],
                                                        "output.labels": [{"value": 1, "name": "a", "region": "WT"}]})
        r = invoke("verify", folder)
        assert r.exit_code == 2 and "FAILED" in r.stdout

    def test_models_lists_bundled(self):
        r = invoke("models")
        assert r.exit_code == 0


class TestDemo:
    def test_demo_runs_bundled_model_on_bundled_sample(self, tmp_path):
        r = invoke("demo", "-o", tmp_path / "demo", "--overlay")
        assert r.exit_code == 0, r.output
        assert "dice vs sample ground truth" in r.stdout and "demo outputs are in" in r.stdout
        names = {p.name for p in (tmp_path / "demo").iterdir()}
        assert names == {"sample_mask.nii.gz", "sample_report.json", "sample_overlay.png"}
        report = json.loads((tmp_path / "demo" / "sample_report.json").read_text())
        assert len(report["provenance"]["model_sha256"]) == 64
