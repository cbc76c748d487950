"""Golden agreements of :func:`edge_infer.segmentation.segment`: geometry, orientation, 2D and 3D engines."""

from __future__ import annotations

import numpy as np
import pytest

from phantom_helpers import stack
from edge_infer.model import load_model
from edge_infer.options import FinishOptions, RunTuning
from edge_infer.segmentation import segment, show_progress
from edge_infer.samples import brats_region_dice
from edge_infer.scan import Scan

MODS = ("t1", "t1ce", "t2", "flair")


def as_scan(data, affine):
    return Scan(np.ascontiguousarray(data, dtype=np.float32), affine, MODS, {"format": "test"})


@pytest.fixture(scope="module")
def reference(phantom, model2d):
    images, seg, affine = phantom
    lm = load_model(model2d, threads=1)
    return segment(as_scan(stack(images), affine), lm).labels, lm


class TestSegment:
    def test_rule_model_finds_the_tumour(self, phantom, reference):
        """Not a trained model, but its WT (FLAIR-bright) region overlaps the phantom's."""
        labels, _ = reference
        dice = brats_region_dice(labels, phantom[1])
        assert dice["WT"] > 0.3, dice

    def test_2d_labels_in_nifti_voxel_order(self, reference):
        """A RAS scan sliced along K: the label map is Fortran-ordered, as the writer stores it."""
        labels, _ = reference
        assert labels.flags.f_contiguous and labels.dtype == np.uint8

    @pytest.mark.parametrize("name, flips, perm", [
        ("LPS", (0, 1), (0, 1, 2)),
        ("flipped-S", (2,), (0, 1, 2)),
        ("permuted", (), (2, 0, 1)),
        ("LPS-permuted", (0, 1), (1, 2, 0)),
    ])
    def test_other_orientations_line_up(self, phantom, reference, name, flips, perm):
        """The same anatomy stored with flipped/permuted axes gives the same mask, voxel for
        voxel once mapped through the affines."""
        images, _, affine = phantom
        labels, lm = reference
        data = stack(images)
        aff = affine.copy()
        for ax in flips:
            data = np.flip(data, axis=1 + ax)
            flip = np.eye(4)
            flip[ax, ax] = -1
            flip[ax, 3] = data.shape[1 + ax] - 1
            aff = aff @ flip
        data = data.transpose(0, *(1 + np.array(perm)))
        aff = aff[:, list(perm) + [3]]
        out = segment(as_scan(data, aff), lm).labels
        # bring the result back to the reference layout by the same index algebra
        back = out.transpose(np.argsort(perm))
        for ax in flips:
            back = np.flip(back, axis=ax)
        assert np.array_equal(back, labels)

    def test_oblique_affine(self, phantom, reference):
        """A small rotation keeps the closest canonical axes: the mask is identical and is
        written with the oblique affine, so it lines up physically."""
        images, _, affine = phantom
        labels, lm = reference
        t = np.deg2rad(12)
        rot = np.array([[np.cos(t), -np.sin(t), 0, 0], [np.sin(t), np.cos(t), 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
        out = segment(as_scan(stack(images), rot @ affine), lm).labels
        assert np.array_equal(out, labels)

    def test_anisotropic_scan_is_resampled_and_restored(self, phantom, model2d):
        """A 2 mm through-plane scan: resampled to 1 mm for the model, mask back on 2 mm grid."""
        images, seg, affine = phantom
        data = stack(images)[:, :, :, ::2]
        aff = affine.copy()
        aff[:3, 2] *= 2
        lm = load_model(model2d, threads=1)
        res = segment(as_scan(data, aff), lm)
        assert res.labels.shape == data.shape[1:]
        assert res.prepared.resampled
        dice = brats_region_dice(res.labels, seg[:, :, ::2])
        assert dice["WT"] > 0.3
        assert any("resampled" in w for w in res.warnings)

    def test_3d_windows_match_whole_volume_convolution(self, phantom, tmp_path):
        """Sliding windows (16^3 tiles, overlap 0.5, Gaussian blending) of a 3x3x3 convolution
        agree with the same convolution run on the whole volume at once, except at the few
        voxels where a tile's zero padding cuts the kernel."""
        from edge_infer.finish import labels_from_regions, regions_from_logits
        from edge_infer.prepare import restore_mask
        from model_factory import conv_model, write_model

        images, _, affine = phantom
        folder = write_model(tmp_path / "m3", conv_model(3, tile=None), dims=3, tile=(16, 16, 16))
        lm3 = load_model(folder, threads=1)
        res = segment(as_scan(stack(images), affine), lm3, tuning=RunTuning(overlap=0.5))
        assert res.plan.mode.value == "windows" and res.plan.units == 7 * 7 * 3
        from edge_infer.prepare import prepare

        prep = prepare(stack(images), affine, "RAS", (1.0, 1.0, 1.0), "zscore_nonzero")
        whole = lm3.backend.run(prep.data[None])[0]
        m = lm3.manifest
        ref = restore_mask(labels_from_regions(regions_from_logits(whole, m.threshold, "sigmoid"), m.labels, m.channels), res.prepared)
        assert (ref > 0).sum() > 100
        dice = brats_region_dice(res.labels, ref)
        assert min(dice.values()) > 0.97, dice

    def test_release_input_frees_voxels_and_keeps_the_mask(self, phantom, reference):
        images, _, affine = phantom
        labels, lm = reference
        scan = as_scan(stack(images), affine)
        shape = scan.shape
        out = segment(scan, lm, release_input=True)
        assert np.array_equal(out.labels, labels)
        assert scan.released and scan.shape == shape and scan.data.strides == (0, 0, 0, 0)

    def test_overlay_refuses_released_scan(self, phantom, reference):
        from edge_infer.outputs import overlay_bytes
        from edge_infer.report import provenance

        images, _, affine = phantom
        _, lm = reference
        scan = as_scan(stack(images), affine)
        seg = segment(scan, lm, release_input=True)
        with pytest.raises(RuntimeError, match="needs the scan's voxels"):
            overlay_bytes(scan, seg, provenance(lm))

    def test_workers_give_the_same_labels(self, phantom, reference, model2d):
        from edge_infer.planning import plan_run

        images, _, affine = phantom
        labels, lm = reference
        scan = as_scan(stack(images), affine)
        plan = plan_run(scan, lm, tuning=RunTuning(batch=3), workers=3)
        out = segment(scan, lm, plan=plan)
        assert plan.workers == 3 and np.array_equal(out.labels, labels)
        assert 0 < out.backend_seconds <= out.timings["infer"]

    def test_plane_larger_than_tile(self, tmp_path):
        """A 48x40 plane on a model whose manifest tile is 32x32: its dynamic ONNX artifact runs
        the whole plane (same labels as a tile-less model); a fixed 32x32 artifact is refused."""
        from edge_infer.errors import ScanError
        from model_factory import conv_model, write_model

        data = np.random.default_rng(6).normal(100, 20, (4, 48, 40, 6)).astype(np.float32)
        dynamic = load_model(write_model(tmp_path / "dyn", conv_model(2), tile=(32, 32)), threads=1)
        free = load_model(write_model(tmp_path / "free", conv_model(2)), threads=1)
        got = segment(as_scan(data, np.eye(4)), dynamic).labels
        assert got.shape == (48, 40, 6) and np.array_equal(got, segment(as_scan(data, np.eye(4)), free).labels)
        fixed = load_model(write_model(tmp_path / "fixed", conv_model(2, tile=(32, 32)), tile=(32, 32)), threads=1)
        with pytest.raises(ScanError, match="takes fixed 32-voxel slices; use its ONNX artifact"):
            segment(as_scan(data, np.eye(4)), fixed)

    def test_threshold_override_changes_mask(self, phantom, model2d):
        images, _, affine = phantom
        lm = load_model(model2d, threads=1)
        low = segment(as_scan(stack(images), affine), lm, FinishOptions(threshold=0.1)).labels
        high = segment(as_scan(stack(images), affine), lm, FinishOptions(threshold=0.9)).labels
        assert (low > 0).sum() > (high > 0).sum()


class TestShowProgress:
    class Stream:
        def __init__(self, tty: bool) -> None:
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    @pytest.mark.parametrize("tty, quiet, forced, shown", [
        (True, False, None, True), (False, False, None, False), (True, True, None, False),
        (False, True, True, True), (True, False, False, False),
    ])
    def test_only_on_a_terminal_unless_forced(self, tty, quiet, forced, shown):
        assert show_progress(RunTuning(quiet=quiet, progress=forced), self.Stream(tty)) is shown


class TestSchema2Fields:
    """The manifest's step, blending and clipped_zscore reach the engines (schema 2)."""

    def test_step_sets_the_default_overlap(self, phantom, tmp_path):
        from model_factory import conv_model, write_model

        images, _, affine = phantom
        folder = write_model(tmp_path / "m", conv_model(3, tile=None), dims=3, tile=(16, 16, 16),
                             overrides={"input.step": 1.0, "input.blending": "constant"})
        res = segment(as_scan(stack(images), affine), load_model(folder, threads=1))
        assert res.plan.overlap == 0.0 and res.plan.units < 7 * 7 * 3

    def test_clipped_zscore_equals_prenormalised_input(self, phantom, model2d, tmp_path):
        from edge_infer.manifest_v2 import Intensity
        from edge_infer.prepare import clipped_zscore
        from model_factory import write_model

        images, _, affine = phantom
        stats = [{"low": 10.0, "high": 300.0, "mean": 100.0 + c, "std": 40.0} for c in range(4)]
        clipped = write_model(tmp_path / "c", overrides={"input.normalization": "clipped_zscore", "input.intensity": stats})
        plain = write_model(tmp_path / "p", overrides={"input.normalization": "none"})
        data = stack(images)
        got = segment(as_scan(data, affine), load_model(clipped, threads=1)).labels
        pre = clipped_zscore(data, [Intensity(**s) for s in stats])
        want = segment(as_scan(pre, affine), load_model(plain, threads=1)).labels
        assert want.any() and np.array_equal(got, want)
