"""Golden agreements across input formats: the same case as NIfTI and as a DICOM study."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from dicom_factory import write_dicom_study
from edge_infer.options import ModelChoice, OutputSpec
from edge_infer.run import run_case
from edge_infer.readers import read_scan

MODS = ("t1", "t1ce", "t2", "flair")


@pytest.fixture(scope="module")
def dicom_copy(case_dir, tmp_path_factory):
    """The phantom case written as a 4-series DICOM study, files shuffled, one folder."""
    scan = read_scan([case_dir], MODS)
    folder = tmp_path_factory.mktemp("dicom")
    write_dicom_study(folder, scan.data, scan.affine, MODS, shuffle=True)
    return folder, scan


class TestNiftiVsDicom:
    def test_same_volume_and_grid(self, dicom_copy):
        folder, nifti_scan = dicom_copy
        dcm = read_scan([folder], MODS)
        assert np.array_equal(dcm.data, nifti_scan.data)
        assert np.allclose(dcm.affine, nifti_scan.affine, atol=1e-4)

    def test_same_mask(self, dicom_copy, case_dir, model2d, tmp_path):
        folder, _ = dicom_copy
        a = run_case([case_dir], OutputSpec(tmp_path / "nifti"), model=ModelChoice(model=model2d))
        b = run_case([folder], OutputSpec(tmp_path / "dicom"), model=ModelChoice(model=model2d))
        assert (a.segmentation.labels > 0).sum() > 0
        assert np.array_equal(a.segmentation.labels, b.segmentation.labels)
        ma, mb = nib.load(a.outputs["mask"]), nib.load(b.outputs["mask"])
        assert np.allclose(ma.affine, mb.affine, atol=1e-4)
        assert b.outputs["mask"].name.startswith("dicom-")
        assert b.report.input["format"] == "dicom"

    def test_same_mask_3d(self, dicom_copy, case_dir, model3d, tmp_path):
        folder, _ = dicom_copy
        a = run_case([case_dir], OutputSpec(tmp_path / "n3"), model=ModelChoice(model=model3d))
        b = run_case([folder], OutputSpec(tmp_path / "d3"), model=ModelChoice(model=model3d))
        assert np.array_equal(a.segmentation.labels, b.segmentation.labels)
