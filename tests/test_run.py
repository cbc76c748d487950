"""`run_case` end to end: outputs on the input grid, deterministic bytes, the same voxels as
the in-memory `segment`, and the same voxels as before the pipeline split (a stored sha256)."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest

from edge_infer.errors import InputError, OutputError
from edge_infer.model import load_model
from edge_infer.options import FinishOptions, ModelChoice, OutputSpec, RunTuning
from edge_infer.run import run_case
from edge_infer.samples import sample_case
from edge_infer.readers import read_scan
from edge_infer.segmentation import segment

#: sha256 of the C-ordered uint8 label array of `edge-infer run` on the bundled sample with the
#: bundled default model (ONNX fp32 artifact), recorded with the ORIGINAL code at commit 088c57a
#: (edge_infer/pipeline.py, before it was split into run/segment/planning/report/outputs)
SAMPLE_LABELS_SHA256 = "22d9b57e9cf090f3b22032df92323a5ace8152eadacb624ef4b6d8a9d2aa84c0"


def labels_sha256(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.uint8).tobytes()).hexdigest()


class TestRunCase:
    def test_outputs_on_input_grid(self, case_dir, model2d, tmp_path):
        res = run_case([case_dir], OutputSpec(tmp_path, overlay=True), model=ModelChoice(model=model2d))
        img = nib.load(res.outputs["mask"])
        src = nib.load(case_dir / "case_flair.nii.gz")
        assert img.shape == src.shape
        assert np.allclose(img.affine, src.affine)
        assert img.get_data_dtype() == np.uint8
        assert np.array_equal(np.asarray(img.dataobj), res.segmentation.labels)
        assert res.report.provenance["model_sha256"] in img.header.extensions[0].get_content().decode()
        assert res.outputs["overlay"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for stage in ("read", "prepare", "infer", "finish", "write", "load_model"):
            assert stage in res.report.timings_s
        assert sorted(p.name for p in tmp_path.iterdir()) == ["case_mask.nii.gz", "case_overlay.png", "case_report.json"]

    def test_deterministic_bytes(self, case_dir, model2d, tmp_path):
        choice = ModelChoice(model=model2d)
        a = run_case([case_dir], OutputSpec(tmp_path / "a"), model=choice)
        b = run_case([case_dir], OutputSpec(tmp_path / "b"), model=choice)
        assert a.outputs["mask"].read_bytes() == b.outputs["mask"].read_bytes()

    def test_same_labels_as_segment(self, case_dir, model3d, tmp_path):
        """The files path and the in-memory core agree voxel for voxel (3D windows, cleaning on)."""
        finish = FinishOptions(keep_largest=True, min_blob_mm3=20.0)
        tuning = RunTuning(overlap=0.25)
        res = run_case([case_dir], OutputSpec(tmp_path), model=ModelChoice(model=model3d), finish=finish,
                       tuning=tuning)
        lm = load_model(model3d)
        want = segment(read_scan([case_dir], lm.manifest.modalities), lm, finish, tuning=tuning).labels
        assert (want > 0).sum() > 0
        assert np.array_equal(np.asarray(nib.load(res.outputs["mask"]).dataobj), want)

    def test_sample_mask_unchanged_since_the_pipeline_split(self, tmp_path):
        """The bundled sample with the bundled default model gives the labels the original code
        gave, with the full field of view (``--no-crop``; issue 15's crop is checked below)."""
        choice = ModelChoice(backend="onnx", precision="fp32", threads=1)
        res = run_case([sample_case()], OutputSpec(tmp_path, name="sample"), model=choice,
                       tuning=RunTuning(crop=False))
        labels = np.asarray(nib.load(res.outputs["mask"]).dataobj)
        assert res.report.crop is None
        assert labels_sha256(labels) == labels_sha256(res.segmentation.labels) == SAMPLE_LABELS_SHA256

    def test_sample_mask_with_crop_within_dice_of_the_stored_one(self, tmp_path):
        """Cropping (the bundled model's default) keeps the stored mask within Dice 0.995 per label."""
        choice = ModelChoice(backend="onnx", precision="fp32", threads=1)
        full = run_case([sample_case()], OutputSpec(tmp_path / "full", name="s"), model=choice,
                        tuning=RunTuning(crop=False)).segmentation.labels
        res = run_case([sample_case()], OutputSpec(tmp_path / "crop", name="s"), model=choice)
        assert res.report.crop is not None and 0.0 < res.report.crop["compute_saved"] < 1.0
        for value in (1, 2, 4):
            a, b = full == value, res.segmentation.labels == value
            assert a.sum() > 0
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.995

    def test_seg_of_nifti_input_writes_nothing(self, case_dir, model2d, tmp_path):
        with pytest.raises(OutputError, match="DICOM SEG needs DICOM input"):
            run_case([case_dir], OutputSpec(tmp_path / "out", formats=("seg",)), model=ModelChoice(model=model2d))
        assert not (tmp_path / "out").exists()


class TestOutputSpec:
    def test_unknown_format_is_refused(self):
        with pytest.raises(InputError, match="unknown mask format.*choose from nifti, seg"):
            OutputSpec(formats=("png",))

    def test_out_dir_becomes_a_path(self, tmp_path):
        assert OutputSpec(str(tmp_path)).out_dir == tmp_path
