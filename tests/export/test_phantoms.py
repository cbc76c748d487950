"""Tests of export.phantoms (numpy + nibabel only; no torch needed)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from export.phantoms import MODALITIES, brats_regions, case_files, make_case, write_case, write_cases

SMALL = (64, 64, 32)


class TestMakeCase:
    def test_shapes_and_dtypes(self):
        images, seg, affine = make_case(SMALL, seed=1)
        assert set(images) == set(MODALITIES)
        for img in images.values():
            assert img.shape == SMALL and img.dtype == np.float32
        assert seg.shape == SMALL and seg.dtype == np.uint8
        assert affine.shape == (4, 4)

    def test_labels_are_brats(self):
        _, seg, _ = make_case(SMALL, seed=2)
        assert set(np.unique(seg)) <= {0, 1, 2, 4}
        assert (seg == 2).any() and (seg == 4).any()

    def test_deterministic_per_seed(self):
        a = make_case(SMALL, seed=5)
        b = make_case(SMALL, seed=5)
        c = make_case(SMALL, seed=6)
        assert np.array_equal(a.seg, b.seg)
        assert all(np.array_equal(a.images[m], b.images[m]) for m in MODALITIES)
        assert not np.array_equal(a.seg, c.seg)

    def test_tumours_vary_in_position_and_size(self):
        centres, sizes = [], []
        for s in range(6):
            seg = make_case(SMALL, seed=s).seg
            idx = np.argwhere(seg > 0)
            centres.append(idx.mean(0))
            sizes.append(len(idx))
        assert np.ptp(np.array(centres), axis=0).max() > 5
        assert max(sizes) > 1.5 * min(sizes)

    def test_affine_is_ras_with_spacing(self):
        _, _, affine = make_case(SMALL, spacing=(1.0, 1.0, 2.0), seed=0)
        assert nib.aff2axcodes(affine) == ("R", "A", "S")
        assert np.allclose(np.diag(affine)[:3], (1.0, 1.0, 2.0))

    def test_background_outside_head_is_zero(self):
        images, _, _ = make_case(SMALL, seed=0)
        for img in images.values():
            assert img[0, 0, 0] == 0 and img[-1, -1, -1] == 0 and (img > 0).mean() > 0.3

    def test_skull_stripped_has_less_foreground(self):
        full = (make_case(SMALL, seed=0).images["t1"] > 0).sum()
        stripped = (make_case(SMALL, seed=0, skull=False).images["t1"] > 0).sum()
        assert stripped < 0.85 * full

    def test_modality_contrast(self):
        images, seg, _ = make_case((96, 96, 64), seed=3)
        core = slice(30, 66), slice(30, 66), slice(20, 44)
        healthy = np.zeros(seg.shape, bool)
        healthy[core] = True
        healthy &= seg == 0
        et, edema, nec = seg == 4, seg == 2, seg == 1
        med = lambda m, mask: float(np.median(images[m][mask]))  # noqa: E731
        assert med("t1ce", et) > 1.2 * med("t1ce", healthy)
        assert med("flair", edema) > 1.4 * med("flair", healthy)
        assert med("t2", edema) > 1.4 * med("t2", healthy)
        if nec.sum() > 20:
            assert med("t1", nec) < med("t1", healthy)

    @pytest.mark.parametrize("shape", [(4, 64, 64), (64, 64)])
    def test_bad_shape_is_refused(self, shape):
        with pytest.raises(ValueError, match="shape"):
            make_case(shape)

    def test_bad_spacing_is_refused(self):
        with pytest.raises(ValueError, match="spacing"):
            make_case(SMALL, spacing=0)


class TestBratsRegions:
    def test_nested_regions(self):
        seg = np.array([0, 1, 2, 4], np.uint8)
        assert brats_regions(seg).tolist() == [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]


class TestWriteCase:
    def test_brats_layout(self, tmp_path):
        case = write_case(tmp_path, "P001", shape=SMALL, seed=4)
        files = case_files(tmp_path, "P001")
        assert case == tmp_path / "P001"
        assert sorted(p.name for p in case.iterdir()) == sorted(p.name for p in files.values())
        for mod in MODALITIES:
            img = nib.load(files[mod])
            assert img.get_data_dtype() == np.int16 and img.shape == SMALL
        seg = nib.load(files["seg"])
        assert seg.get_data_dtype() == np.uint8
        assert np.array_equal(np.asarray(seg.dataobj), make_case(SMALL, seed=4).seg)

    def test_write_cases_names_by_seed(self, tmp_path):
        cases = write_cases(tmp_path, [3, 7], shape=SMALL)
        assert [c.name for c in cases] == ["phantom_0003", "phantom_0007"]

    def test_case_id_must_be_plain(self, tmp_path):
        with pytest.raises(ValueError, match="case_id"):
            write_case(tmp_path, "../escape", shape=SMALL)


def test_importing_export_does_not_import_torch():
    code = "import sys, export, export.phantoms; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=str(Path(__file__).parents[2])).returncode == 0
