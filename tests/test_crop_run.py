"""Issue 15 in the run path: the manifest's crop rule, the reader's profiles, the planned box,
skipped slices and windows reusing the model's own background output, and ``--no-crop``."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from edge_infer.cli import main
from edge_infer.crop import CropRule, foreground_profiles
from edge_infer.cropping import compute_saved, full_unit_equivalents, phase_aligned_box
from edge_infer.engines import Windows, run_windows, runs_of, stream_slices, window_slices
from edge_infer.errors import ModelError, ScanError
from edge_infer.manifest import load_manifest
from edge_infer.model import load_model
from edge_infer.options import RunTuning
from edge_infer.planning import plan_run
from edge_infer.prepare import SliceSource, pad
from edge_infer.readers import read_scan
from edge_infer.scan import Scan
from edge_infer.segmentation import segment
from export.phantoms import make_case, ras_affine, write_case
from model_factory import RULES, conv_model, rule_weights, write_model
from phantom_helpers import stack

CROP = {"input.crop": {"mode": "nonzero", "margin_mm": 0.0}}
SHAPE = (64, 64, 40)


@pytest.fixture(scope="module")
def stripped():
    """A skull-stripped phantom (background exactly zero) padded with empty slices at both ends."""
    images, _, affine = make_case(shape=(64, 64, 32), seed=3, skull=False)
    data = np.zeros((4, *SHAPE), np.float32)
    data[:, :, :, 4:36] = stack(images)
    return Scan(data, ras_affine(SHAPE, 1.0), ("t1", "t1ce", "t2", "flair"))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def both(scan: Scan, lm, **kw):
    full = segment(scan, lm, tuning=RunTuning(crop=False, **kw))
    cropped = segment(scan, lm, tuning=RunTuning(**kw))
    return full, cropped


class TestManifestCrop:
    def test_absent_means_none(self, tmp_path):
        m = load_manifest(write_model(tmp_path))
        assert m.crop == CropRule("none", 0.0)

    def test_read_and_written_back(self, tmp_path):
        m = load_manifest(write_model(tmp_path, overrides={"input.crop": {"mode": "nonzero", "margin_mm": 2}}))
        assert m.crop == CropRule("nonzero", 2.0)
        assert m.to_dict()["input"]["crop"] == {"mode": "nonzero", "margin_mm": 2.0}

    @pytest.mark.parametrize("crop, field", [({"mode": "box"}, "input.crop.mode"),
                                             ({"mode": "nonzero", "margin_mm": -1}, "input.crop.margin_mm"),
                                             ({"mode": "nonzero", "pad": 1}, "input.crop.pad"),
                                             ("nonzero", "input.crop")])
    def test_malformed_rule_named_by_its_path(self, tmp_path, crop, field):
        with pytest.raises(ModelError, match=f"'{field}'"):
            load_manifest(write_model(tmp_path, overrides={"input.crop": crop}))

    @pytest.mark.parametrize("name", ["default", "default-3d"])
    def test_bundled_models_crop_to_nonzero(self, name):
        lm = load_model(name)  # the artifacts' sha256 still match: the manifest is separate
        assert lm.manifest.crop.mode == "nonzero"


class TestReaderProfiles:
    def test_nifti_read_pass_gives_the_profiles(self, tmp_path, gzip_impl):
        folder = write_case(tmp_path, "c", shape=(40, 36, 24), seed=2, skull=False)
        scan = read_scan([folder], ("t1", "t1ce", "t2", "flair"))
        want = foreground_profiles(scan.data)
        assert scan.profiles is not None
        for got, exp in zip(scan.profiles, want):
            assert np.array_equal(got, exp)
        assert not all(p.all() for p in want)   # the phantom has background to crop

    def test_4d_file_gives_the_profiles(self, tmp_path, stripped):
        path = tmp_path / "four.nii.gz"
        nib.save(nib.Nifti1Image(np.moveaxis(stripped.data, 0, -1), stripped.affine), path)
        scan = read_scan([path], stripped.modalities)
        for got, exp in zip(scan.profiles, foreground_profiles(stripped.data)):
            assert np.array_equal(got, exp)


class TestPhaseAlignedBox:
    def test_start_and_stop_on_multiples(self):
        assert phase_aligned_box(((5, 37),), (64,), 8, (1,)) == ((0, 40),)

    def test_minimum_kept_inside_the_axis(self):
        assert phase_aligned_box(((60, 62),), (64,), 8, (16,)) == ((48, 64),)

    def test_box_touching_both_edges_stays_whole(self):
        assert phase_aligned_box(((0, 64), (0, 30)), (64, 30), 16, (1, 1)) == ((0, 64), (0, 30))


class TestComputeSaved:
    def test_counts_the_background_unit_once(self):
        assert compute_saved(10, 100, 10, 4, 100) == pytest.approx(1 - 7 / 10)

    def test_full_unit_equivalents(self):
        assert full_unit_equivalents({"units": 9, "crop": {"full_units": 20, "compute_saved": 0.25}}) == 15
        assert full_unit_equivalents({"units": 9}) == 9


class TestPlanRun:
    def test_box_and_estimates_of_the_cropped_size(self, stripped, tmp_path):
        lm = load_model(write_model(tmp_path, dims=3, tile=(16, 16, 16), divisible_by=8, overrides=CROP))
        full, cropped = plan_run(stripped, lm, tuning=RunTuning(crop=False)), plan_run(stripped, lm)
        assert full.crop_box is None and cropped.crop_box is not None
        assert cropped.units < full.units
        assert all(a % 8 == 0 and (b % 8 == 0 or b == n) for (a, b), n in zip(cropped.crop_box, full.padded_shape))

    def test_cropped_2d_batch_holds_no_more_voxels_than_the_full_view(self, tmp_path):
        images, _, _ = make_case(shape=(240, 240, 8), seed=3, skull=False)
        scan = Scan(stack(images), ras_affine((240, 240, 8), 1.0), ("t1", "t1ce", "t2", "flair"))
        lm = load_model(write_model(tmp_path, divisible_by=16, overrides=CROP))
        full, cropped = plan_run(scan, lm, tuning=RunTuning(crop=False)), plan_run(scan, lm)
        plane = [b - a for ax, (a, b) in enumerate(cropped.crop_box) if ax != 2]
        assert plane[0] * plane[1] < 240 * 240
        assert cropped.batch * plane[0] * plane[1] <= full.batch * 240 * 240

    def test_all_background_scan_refused(self, tmp_path):
        lm = load_model(write_model(tmp_path, overrides=CROP))
        blank = Scan(np.zeros((4, 16, 16, 8), np.float32), np.eye(4), ("t1", "t1ce", "t2", "flair"))
        with pytest.raises(ScanError, match="entirely background"):
            plan_run(blank, lm)


class TestSegmentWithCrop:
    def test_2d_dynamic_crop_matches_full_view(self, stripped, tmp_path):
        lm = load_model(write_model(tmp_path, divisible_by=8, overrides=CROP))
        full, cropped = both(stripped, lm)
        empty = np.flatnonzero(~foreground_profiles(stripped.data)[2])
        assert {0, 1, 2, 3, 36, 37, 38, 39} <= set(empty)
        assert cropped.crop.skipped == len(empty) and cropped.crop.compute_saved > 0.2
        for value in (1, 2, 4):
            assert (full.labels == value).sum() > 0
            assert dice(full.labels == value, cropped.labels == value) >= 0.995
        assert np.array_equal(full.labels[..., empty], cropped.labels[..., empty])

    def test_3d_crop_matches_full_view(self, stripped, tmp_path):
        lm = load_model(write_model(tmp_path, dims=3, tile=(16, 16, 16), divisible_by=8, overrides=CROP))
        full, cropped = both(stripped, lm, overlap=0.5)
        assert cropped.crop.compute_saved > 0.2 and cropped.plan.units < full.plan.units
        assert (full.labels > 0).sum() > 0
        for value in np.unique(full.labels[full.labels > 0]):
            assert dice(full.labels == value, cropped.labels == value) >= 0.995

    def test_skipped_slices_get_the_models_own_background_output(self, stripped, tmp_path):
        """A model whose all-background output is not background (WT bias +5): the empty slices
        are labelled as the model labels them, never assumed to be background."""
        w, b = rule_weights(2)
        b[0] = 5.0
        lm = load_model(write_model(tmp_path, conv_model(2, (64, 64), weights=(w, b)), tile=(64, 64), overrides=CROP))
        full, cropped = both(stripped, lm)
        assert cropped.crop.skipped == int((~foreground_profiles(stripped.data)[2]).sum()) > 0
        assert np.all(cropped.labels[..., :4] == 2)        # edema everywhere on the empty slices
        assert np.array_equal(full.labels, cropped.labels)  # fixed tile: only skipping, exact

    def test_anatomy_to_every_edge_runs_the_full_view(self, stripped, tmp_path):
        """No background to crop (every voxel nonzero): the box is the whole grid, no slice is
        skipped, and the mask is the full view's, voxel for voxel."""
        lm = load_model(write_model(tmp_path, divisible_by=8, overrides=CROP))
        dense = Scan(stripped.data + 1.0, stripped.affine, stripped.modalities)
        full, cropped = both(dense, lm)
        assert cropped.crop.box == ((0, 64), (0, 64), (0, 40)) and cropped.crop.skipped == 0
        assert np.array_equal(full.labels, cropped.labels)

    def test_no_crop_rule_keeps_the_full_view(self, stripped, model2d):
        assert segment(stripped, load_model(model2d)).crop is None


class TestEngineSkip:
    def test_stream_slices_runs_the_background_once(self):
        vol = np.zeros((6, 1, 4, 4), np.float32)
        vol[2:4] = 1.0
        calls = []

        def run(x):
            calls.append(len(x))
            return x + 7.0

        got = {}
        stream_slices(vol, run, lambda s, e, y: got.update({i: y[i - s].copy() for i in range(s, e)}), batch=8,
                      skip=np.array([1, 1, 0, 0, 1, 1], bool))
        assert calls == [3]            # the first empty slice runs in the batch, once
        assert all(np.all(got[i] == 7.0) for i in (0, 1, 4, 5)) and np.all(got[2] == 8.0)

    def test_run_windows_skip_blends_the_same_values(self):
        vol = np.zeros((1, 32, 8, 8), np.float32)
        vol[:, :8] = 1.0
        windows = Windows((8, 8, 8), 0.5, 2)
        skip = np.array([w[0].start >= 8 for w in window_slices(vol.shape[1:], (8, 8, 8), 0.5)])
        calls = []

        def run(x):
            calls.append(len(x))
            return x * 3.0 - 1.0

        a = run_windows(vol, run, np.empty((1, 32, 8, 8), np.float32), windows)
        n_full = sum(calls)
        calls.clear()
        b = run_windows(vol, run, np.empty((1, 32, 8, 8), np.float32), windows, skip=skip)
        assert sum(calls) == n_full - int(skip.sum()) + 1
        np.testing.assert_allclose(a, b, atol=1e-6)


class TestRunsOf:
    def test_maximal_runs(self):
        assert runs_of(np.array([1, 1, 0, 1, 0, 0], bool), True) == [(0, 2), (3, 4)]
        assert runs_of(np.array([1, 1, 0, 1, 0, 0], bool), False) == [(2, 3), (4, 6)]


class TestSliceSourceCropped:
    def test_equals_cropping_the_padded_copy(self):
        rng = np.random.default_rng(0)
        view = rng.normal(size=(2, 3, 10, 12)).astype(np.float32)
        src = SliceSource(view, ((0.5, 2.0, False), (0.0, 1.0, False)), ((3, 3), (2, 2)))
        whole = src[0:3].copy()
        for plane in (((1, 9), (0, 16)), ((0, 16), (5, 7)), ((4, 16), (2, 14))):
            (a, b), (c, d) = plane
            np.testing.assert_array_equal(src.cropped(plane)[0:3], whole[:, :, a:b, c:d])


class TestCliNoCrop:
    def test_all_zero_scan_refused_in_one_line(self, tmp_path):
        folder = tmp_path / "blank"
        folder.mkdir()
        for mod in ("t1", "t1ce", "t2", "flair"):
            nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.int16), np.eye(4)), folder / f"blank_{mod}.nii.gz")
        res = CliRunner().invoke(main, ["run", str(folder), "--out", str(tmp_path / "out")])
        assert res.exit_code == 2
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())

    def test_report_shows_the_crop_and_no_crop_removes_it(self, tmp_path):
        model = write_model(tmp_path / "m", overrides=CROP)
        case = write_case(tmp_path, "c", shape=(48, 48, 24), seed=1, skull=False)
        for flag, out in (([], "a"), (["--no-crop"], "b")):
            res = CliRunner().invoke(main, ["run", str(case), "--model", str(model), "--out", str(tmp_path / out),
                                            "--json", *flag])
            assert res.exit_code == 0, res.output
            report = json.loads((tmp_path / out / "c_report.json").read_text())
            assert (report["crop"] is None) == bool(flag)
        assert report["plan"]["crop_box"] is None


class TestBatchOptions:
    def test_no_crop_changes_the_resume_key_and_the_default_keeps_it(self):
        from edge_infer.batch.adapter import RunOptions

        assert RunOptions().key() == RunOptions(crop=True).key() != RunOptions(crop=False).key()

    def test_batch_has_no_crop(self):
        from edge_infer.cli_batch import batch

        assert any("--no-crop" in p.secondary_opts for p in batch.params if p.name == "crop")


def tight_box(data: np.ndarray) -> tuple[slice, ...]:
    from edge_infer.crop import box_from_profiles, box_slices

    return box_slices(box_from_profiles(foreground_profiles(data)))


class TestBoxMoments:
    def test_statistics_of_the_crop_box(self, stripped, tmp_path):
        from edge_infer.cropping import box_moments

        m = load_manifest(write_model(tmp_path, overrides=CROP))
        box = tight_box(stripped.data)
        for c, mo in enumerate(box_moments(m, stripped)):
            inside = stripped.data[c][box].astype(np.float64)
            assert mo.size == inside.size < stripped.data[c].size
            assert mo.mean * mo.nonzero / mo.size == pytest.approx(inside.mean())
            assert mo.nonzero == np.count_nonzero(inside)

    def test_margin_widens_the_box_within_the_scan(self, stripped, tmp_path):
        from edge_infer.cropping import box_moments

        m = load_manifest(write_model(tmp_path, overrides={"input.crop": {"mode": "nonzero", "margin_mm": 3.0}}))
        box = tight_box(stripped.data)
        grown = np.prod([min(n, s.stop + 3) - max(0, s.start - 3) for s, n in zip(box, SHAPE)])
        assert box_moments(m, stripped)[0].size == grown


class TestNormalisedFirst:
    """Statistics that are not the whole scan's are applied voxel-wise before prepare, as
    nnU-Net normalises its cropped case: ``zscore`` with a crop to nonzero, ``clipped_zscore``."""

    def pointwise_model(self, dims: int):
        w, b = rule_weights(dims)
        w[:] = 0.0
        for o, (src, gain, _bias) in enumerate(RULES):
            w[(o, src) + (1,) * dims] = gain                 # the centre tap only: no neighbours
        return conv_model(dims, weights=(w, b))

    def test_zscore_over_the_crop_box_as_nnunet(self, stripped, tmp_path):
        zs = load_model(write_model(tmp_path / "z", self.pointwise_model(2),
                                    overrides={**CROP, "input.normalization": "zscore"}))
        plain = load_model(write_model(tmp_path / "p", self.pointwise_model(2),
                                       overrides={"input.normalization": "none"}))
        box = tight_box(stripped.data)

        def normalised(region) -> Scan:
            d = stripped.data.astype(np.float64)
            stats = [(d[c][region].mean(), d[c][region].std()) for c in range(4)]
            pre = np.stack([(d[c] - mu) / sd for c, (mu, sd) in enumerate(stats)]).astype(np.float32)
            return Scan(pre, stripped.affine, stripped.modalities)

        want = segment(normalised(box), plain, tuning=RunTuning(crop=False)).labels[box]
        whole = segment(normalised((slice(None),) * 3), plain, tuning=RunTuning(crop=False)).labels[box]
        assert (want > 0).sum() > 0 and (want != whole).sum() > 100   # the box's statistics matter here
        for crop in (True, False):
            got = segment(stripped, zs, tuning=RunTuning(crop=crop)).labels
            assert (got[box] != want).mean() < 1e-4
            assert not got[..., :4].any() and not got[..., 36:].any()

    def test_3d_clipped_zscore_with_a_crop_box_matches_the_full_view(self, stripped, tmp_path):
        """The 3D empty-window test takes the background value of data normalised before prepare
        (it raised "unknown normalization 'clipped_zscore'" for a model that crops)."""
        stats = [{"low": 0.0, "high": 400.0, "mean": 100.0, "std": 60.0}] * 4
        lm = load_model(write_model(tmp_path, self.pointwise_model(3), dims=3, tile=(16, 16, 16),
                                    overrides={**CROP, "input.normalization": "clipped_zscore",
                                               "input.intensity": stats}))
        full, cropped = both(stripped, lm, overlap=0.5)
        assert cropped.crop is not None and cropped.crop.compute_saved > 0.2
        assert (full.labels > 0).sum() > 0 and np.array_equal(full.labels, cropped.labels)

    @pytest.mark.parametrize("overrides, copy", [({**CROP, "input.normalization": "zscore"}, True),
                                                 ({"input.normalization": "zscore"}, False),
                                                 ({**CROP, "input.normalization": "zscore_nonzero"}, False)])
    def test_the_planner_counts_the_normalised_copy(self, stripped, tmp_path, overrides, copy):
        from edge_infer.plan import geometry_for

        assert geometry_for(load_manifest(write_model(tmp_path, overrides=overrides)), stripped).normalised_copy is copy
