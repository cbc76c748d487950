"""Tests of edge_infer.sanity: a channel with no image is refused, non-MR intensities warned about,
through the functions and through `edge-infer run`."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from edge_infer.cli import main
from edge_infer.errors import ScanError
from edge_infer.moments import moments_of
from edge_infer.sanity import checked_scan, check_not_constant, duplicate_warnings, negative_warnings
from edge_infer.scan import Scan

MODS = ("t1", "t1ce", "t2", "flair")


def channels(*arrays) -> np.ndarray:
    return np.stack([np.asarray(a, np.float32) for a in arrays])


def image(seed: int, shape=(8, 8, 6)) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1, 900, shape).astype(np.float32)


class TestCheckNotConstant:
    def test_all_zero(self):
        with pytest.raises(ScanError, match="^modality t2 is all zero: it holds no image; check which file"):
            check_not_constant([moments_of(image(0)), moments_of(np.zeros((4, 4, 4)))], ("t1", "t2"))

    def test_constant(self):
        with pytest.raises(ScanError, match=r"modality flair is constant \(every voxel is 117\)"):
            check_not_constant([moments_of(np.full((4, 4, 4), 117.0))], ("flair",))

    def test_image_passes(self):
        x = np.zeros((4, 4, 4))
        x[1, 1, 1] = 5.0                       # mostly background is still an image
        check_not_constant([moments_of(x), moments_of(image(1))], ("t1", "t2"))


class TestNegativeWarnings:
    def test_statistical_map(self):
        z = np.random.default_rng(2).normal(0, 1, (8, 8, 6))
        (w,) = negative_warnings([moments_of(image(0)), moments_of(z)], ("t1", "flair"))
        assert w.startswith("modality flair has ") and "negative voxels: MR magnitude images have none" in w
        share = int(w.split("has ")[1].split("%")[0])
        assert abs(share - 100 * (z < 0).mean()) <= 1

    def test_a_few_negatives_from_interpolation_pass(self):
        x = image(3)
        x.flat[:5] = -2.0                      # 5 of 384 voxels: ringing at an edge
        assert negative_warnings([moments_of(x)], ("t1",)) == []

    def test_counted_across_slabs(self, monkeypatch):
        from edge_infer import moments as M

        monkeypatch.setattr(M, "SLAB_BYTES", 4 * 8 * 6)    # one plane per slab
        x = image(4)
        x[5] = -x[5]
        assert moments_of(x).negative == 48 and negative_warnings([moments_of(x)], ("t1",), share=0.1) != []


class TestDuplicateWarnings:
    def test_same_series_twice(self):
        a, b = image(0), image(1)
        data = channels(a, b, a)
        (w,) = duplicate_warnings(data, [moments_of(c) for c in data], ("t1", "t1ce", "t2"))
        assert w.startswith("modalities t1 and t2 are identical voxel for voxel")

    def test_equal_moments_different_voxels(self):
        a = image(0)
        b = a[::-1].copy()                     # same values, other places: same moments
        data = channels(a, b)
        m = [moments_of(c) for c in data]
        assert m[0].lo == m[1].lo and duplicate_warnings(data, m, ("t1", "t2")) == []


class TestCheckedScan:
    def test_fills_moments_and_warns(self):
        a = image(0)
        scan = Scan(channels(a, a), np.eye(4), ("t1", "t2"))
        out, warnings = checked_scan(scan)
        assert out.moments == (moments_of(a), moments_of(a)) and scan.moments is None
        assert len(warnings) == 1 and "t1 and t2 are identical" in warnings[0]

    def test_reader_moments_used(self):
        scan = Scan(channels(image(0)), np.eye(4), ("t1",), moments=(moments_of(np.zeros(3)),))
        with pytest.raises(ScanError, match="modality t1 is all zero"):
            checked_scan(scan)


def case_with(case_dir, tmp_path, mod: str, fn):
    """A copy of the BraTS case folder with modality ``mod``'s voxels replaced by ``fn(voxels)``."""
    folder = shutil.copytree(case_dir, tmp_path / "case")
    (path,) = folder.glob(f"*_{mod}.nii.gz")
    img = nib.load(path)
    nib.save(nib.Nifti1Image(fn(np.asarray(img.dataobj, np.float32)), img.affine), path)
    return folder


class TestRun:
    def test_all_zero_channel_refused_in_one_line(self, case_dir, model2d, tmp_path):
        folder = case_with(case_dir, tmp_path, "t2", np.zeros_like)
        r = CliRunner().invoke(main, ["run", str(folder), "-o", str(tmp_path / "out"), "--model", str(model2d)])
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert r.exit_code == 2 and lines == ["error: modality t2 is all zero: it holds no image; "
                                              "check which file or series was given as t2"]
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    def test_statistical_map_warned_in_report_and_stderr(self, case_dir, model2d, tmp_path):
        folder = case_with(case_dir, tmp_path, "flair", lambda x: x - np.median(x[x > 0]))
        r = CliRunner().invoke(main, ["run", str(folder), "-o", str(tmp_path / "out"), "--model", str(model2d)])
        assert r.exit_code == 0, r.output
        report = json.loads(next((tmp_path / "out").glob("*_report.json")).read_text())
        (w,) = [w for w in report["warnings"] if "negative voxels" in w]
        assert w.startswith("modality flair has ") and f"warning: {w}" in r.stderr
