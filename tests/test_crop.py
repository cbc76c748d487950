"""Crop geometry (edge_infer.crop): hand-made arrays, one class per public function."""

from __future__ import annotations

import numpy as np
import pytest

from edge_infer.crop import (CropRule, ProfileSum, align_box, box_from_profiles, box_slices, box_voxels,
                             check_has_foreground, foreground_box, foreground_profiles, grow_box, margin_voxels,
                             oriented_box, parse_crop_rule, permute_profiles, place_in_full, resampled_box,
                             union_profiles)
from edge_infer.errors import ModelError, ScanError
from edge_infer.moments import memory_order, slabs
from edge_infer.prepare import (apply_orientation, orientation_transform, resample_linear, resampled_shape)


def _scan(shape=(10, 12, 8), boxes=(((2, 5), (3, 9), (1, 4)),), channels=2, seed=0):
    """A [C, *shape] scan zero outside the given boxes (one box per channel, cycling)."""
    rng = np.random.default_rng(seed)
    data = np.zeros((channels, *shape), np.float32)
    for c in range(channels):
        box = boxes[c % len(boxes)]
        data[(c, *box_slices(box))] = rng.uniform(1, 5, [b - a for a, b in box])
    return data


def _tight_box(data):
    """The reference: np.argwhere over the union of the channels."""
    pts = np.argwhere((data != 0).any(axis=0))
    return tuple((int(lo), int(hi) + 1) for lo, hi in zip(pts.min(axis=0), pts.max(axis=0)))


class TestForegroundProfiles:
    def test_marks_planes_with_any_channel_nonzero(self):
        data = _scan(boxes=(((2, 5), (3, 9), (1, 4)), ((6, 7), (0, 1), (7, 8))))
        prof = foreground_profiles(data)
        assert [p.shape for p in prof] == [(10,), (12,), (8,)]
        assert np.flatnonzero(prof[0]).tolist() == [2, 3, 4, 6]
        assert np.flatnonzero(prof[1]).tolist() == [0, 3, 4, 5, 6, 7, 8]
        assert np.flatnonzero(prof[2]).tolist() == [1, 2, 3, 7]

    def test_negative_values_are_foreground(self):
        data = np.zeros((1, 4, 4, 4), np.int16)
        data[0, 1, 2, 3] = -7
        assert [np.flatnonzero(p).tolist() for p in foreground_profiles(data)] == [[1], [2], [3]]


class TestProfileSum:
    @pytest.mark.parametrize("order", ["C", "F"])
    def test_slabs_in_memory_order_give_the_same_profiles(self, order):
        data = np.asfortranarray(_scan((9, 7, 30), boxes=(((0, 3), (2, 7), (5, 29)), ((8, 9), (0, 1), (0, 2)))))
        data = data if order == "F" else np.ascontiguousarray(data)
        per_channel = []
        for ch in data:
            view = memory_order(ch)
            acc = ProfileSum(view.shape)
            for sl in slabs(view.shape[0], 4, 4):            # tiny slabs: many of them
                acc.add(sl.start, view[sl])
            order_ = np.argsort([-abs(s) for s in ch.strides], kind="stable")
            per_channel.append(permute_profiles(acc.result(), order_))
        got = union_profiles(*per_channel)
        for g, want in zip(got, foreground_profiles(data)):
            np.testing.assert_array_equal(g, want)

    def test_empty_slabs_add_nothing(self):
        acc = ProfileSum((3, 4))
        acc.add(0, np.zeros((3, 4)))
        assert not any(p.any() for p in acc.result())


class TestUnionProfiles:
    def test_or_of_channels(self):
        a = (np.array([1, 0, 0], bool), np.array([0, 1], bool))
        b = (np.array([0, 0, 1], bool), np.array([0, 1], bool))
        got = union_profiles(a, b)
        assert got[0].tolist() == [True, False, True] and got[1].tolist() == [False, True]


class TestPermuteProfiles:
    def test_back_to_array_axes(self):
        prof = (np.zeros(5, bool), np.ones(3, bool), np.zeros(2, bool))   # of a view with axes (2, 0, 1)
        got = permute_profiles(prof, (2, 0, 1))
        assert [len(p) for p in got] == [3, 2, 5]


class TestBoxFromProfiles:
    def test_first_and_last_occupied_plane(self):
        assert box_from_profiles([np.array([0, 1, 0, 1, 0], bool), np.array([1, 1], bool)]) == ((1, 4), (0, 2))

    def test_nothing_occupied_is_none(self):
        assert box_from_profiles([np.zeros(4, bool), np.zeros(2, bool)]) is None


class TestForegroundBox:
    @pytest.mark.parametrize("boxes", [
        (((2, 5), (3, 9), (1, 4)),),
        (((0, 10), (0, 12), (0, 8)),),                        # touches every edge
        (((0, 1), (11, 12), (0, 1)), ((9, 10), (0, 1), (7, 8))),   # corners in two channels
        (((4, 5), (6, 7), (3, 4)),),                          # one voxel
    ])
    def test_equals_argwhere(self, boxes):
        data = _scan(boxes=boxes)
        assert foreground_box(data) == _tight_box(data)

    def test_one_voxel_in_one_channel(self):
        data = np.zeros((4, 10, 12, 8), np.float32)
        data[3, 9, 0, 7] = 0.5
        assert foreground_box(data) == ((9, 10), (0, 1), (7, 8))

    def test_all_background_is_none(self):
        assert foreground_box(np.zeros((4, 5, 6, 7), np.float32)) is None

    def test_2d_planes(self):
        data = np.zeros((2, 6, 5), np.float32)
        data[1, 2:4, 1] = 3
        assert foreground_box(data) == ((2, 4), (1, 2))


class TestCheckHasForeground:
    def test_refuses_an_empty_scan_in_one_line(self):
        box = foreground_box(np.zeros((2, 3, 3, 3), np.float32))
        with pytest.raises(ScanError, match=r"^the scan is entirely background: every voxel of t1, flair is zero;[^\n]*$"):
            check_has_foreground(box, ("t1", "flair"))

    def test_passes_a_box_through(self):
        assert check_has_foreground(((0, 1), (2, 3), (4, 5)), ("t1",)) == ((0, 1), (2, 3), (4, 5))


class TestMarginVoxels:
    def test_anisotropic_spacing_rounds_up(self):
        assert margin_voxels(5.0, (1.0, 0.5, 3.0)) == (5, 10, 2)

    def test_exact_multiples_are_not_rounded_up(self):
        assert margin_voxels(6.0, (1.5, 2.0, 0.1)) == (4, 3, 60)

    def test_zero_margin(self):
        assert margin_voxels(0.0, (1.0, 2.0, 3.0)) == (0, 0, 0)


class TestGrowBox:
    def test_widens_and_clips_at_every_edge(self):
        assert grow_box(((1, 3), (5, 9), (0, 10)), (2, 4, 1), (10, 10, 10)) == ((0, 5), (1, 10), (0, 10))

    def test_anisotropic_margin_from_mm(self):
        box = grow_box(((40, 60), (40, 60), (10, 20)), margin_voxels(4.0, (1.0, 1.0, 4.0)), (100, 100, 30))
        assert box == ((36, 64), (36, 64), (9, 21))


class TestAlignBox:
    def test_grows_to_divisible_by_centred(self):
        box, pad = align_box(((10, 15), (20, 36)), (100, 100), divisible_by=16)
        assert box == ((5, 21), (20, 36)) and pad == [(0, 0), (0, 0)]

    def test_shifts_inside_the_volume_at_edges(self):
        box, pad = align_box(((0, 3), (97, 100)), (100, 100), divisible_by=8)
        assert box == ((0, 8), (92, 100)) and pad == [(0, 0), (0, 0)]

    def test_tile_minimum(self):
        box, _ = align_box(((50, 51), (50, 51), (50, 51)), (200, 200, 100), divisible_by=8, minimum=(64, 64, 32))
        assert [b - a for a, b in box] == [64, 64, 32]
        assert all(a <= 50 < b for a, b in box)

    def test_pads_when_the_volume_is_smaller(self):
        box, pad = align_box(((3, 9), (0, 40)), (12, 40), divisible_by=16, minimum=(32, 32))
        assert box == ((0, 12), (0, 40))
        assert pad == [(10, 10), (4, 4)]                    # 12 -> 32 and 40 -> 48

    @pytest.mark.parametrize("seed", range(5))
    def test_random_boxes_contain_the_input(self, seed):
        rng = np.random.default_rng(seed)
        shape = tuple(int(n) for n in rng.integers(20, 90, 3))
        lo = [int(rng.integers(0, n)) for n in shape]
        box = tuple((a, int(rng.integers(a + 1, n + 1))) for a, n in zip(lo, shape))
        out, pad = align_box(box, shape, divisible_by=8, minimum=(16, 16, 16))
        for (a, b), (c, d), n, (p0, p1) in zip(box, out, shape, pad):
            assert 0 <= c <= a and b <= d <= n
            assert (d - c + p0 + p1) % 8 == 0 and d - c + p0 + p1 >= 16


class TestOrientedBox:
    @pytest.mark.parametrize("axcodes", ["RAS", "LPS", "LAI", "ASR", "SPL", "IRA"])
    def test_matches_the_reoriented_array(self, axcodes):
        from nibabel.orientations import axcodes2ornt, inv_ornt_aff

        shape = (10, 12, 8)
        data = _scan(shape, boxes=(((0, 3), (5, 12), (2, 3)),))
        affine = np.diag([2.0, 1.0, 3.0, 1.0]) @ inv_ornt_aff(axcodes2ornt(axcodes), shape)   # RAS -> axcodes
        tf = orientation_transform(affine, "RAS")
        reoriented = apply_orientation(data, tf)
        assert oriented_box(foreground_box(data), tf, shape) == foreground_box(reoriented)

    def test_lps_flips_two_axes(self):
        tf = orientation_transform(np.diag([-1.0, -1.0, 1.0, 1.0]), "RAS")
        assert oriented_box(((0, 2), (3, 10), (4, 5)), tf, (10, 10, 10)) == ((8, 10), (0, 7), (4, 5))


class TestResampledBox:
    @pytest.mark.parametrize("spacing,target", [((1.0, 1.0, 3.0), (1.0, 1.0, 1.0)), ((0.5, 2.0, 1.3), (1.0, 1.0, 1.0))])
    def test_holds_every_interpolated_foreground_voxel(self, spacing, target):
        shape = (20, 11, 9)
        data = _scan(shape, boxes=(((3, 9), (0, 4), (5, 9)),), channels=1)
        out = resample_linear(data, spacing, target)
        new_shape = resampled_shape(shape, spacing, target)
        got = resampled_box(foreground_box(data), shape, spacing, target, new_shape)
        tight = foreground_box(out)
        assert all(c <= a and b <= d for (a, b), (c, d) in zip(tight, got))
        assert all((d - c) - (b - a) <= 2 for (a, b), (c, d) in zip(tight, got))   # at most a voxel each side


class TestBoxSlices:
    def test_indexes_the_box(self):
        data = np.arange(60).reshape(3, 4, 5)
        assert data[box_slices(((1, 2), (0, 4), (3, 5)))].shape == (1, 4, 2)


class TestBoxVoxels:
    def test_product_of_sides(self):
        assert box_voxels(((1, 4), (0, 5), (2, 3))) == 15


class TestPlaceInFull:
    def test_inverse_of_cropping_with_background_outside(self):
        labels = np.random.default_rng(1).integers(0, 5, (10, 12, 8)).astype(np.uint8)
        box = ((2, 7), (0, 12), (7, 8))
        full = place_in_full(labels[box_slices(box)], box, labels.shape)
        np.testing.assert_array_equal(full[box_slices(box)], labels[box_slices(box)])
        outside = np.ones(labels.shape, bool)
        outside[box_slices(box)] = False
        assert full.dtype == np.uint8 and not full[outside].any()

    def test_leading_axes_and_a_background_value(self):
        logits = np.ones((3, 1, 1, 1), np.float32)
        full = place_in_full(logits, ((4, 5), (0, 1), (2, 3)), (5, 1, 3), background=-9.0)
        assert full.shape == (3, 5, 1, 3) and full[:, 4, 0, 2].tolist() == [1, 1, 1]
        assert (full == -9.0).sum() == 3 * 14

    def test_refuses_a_mismatched_box(self):
        with pytest.raises(ValueError, match=r"does not match its box \(2, 2\)"):
            place_in_full(np.zeros((3, 2)), ((0, 2), (0, 2)), (5, 5))


class TestCropRule:
    def test_to_dict_round_trips(self):
        rule = CropRule("nonzero", 4.5)
        assert parse_crop_rule(rule.to_dict()) == rule

    def test_default_is_no_crop(self):
        assert CropRule().mode == "none"


class TestParseCropRule:
    def test_missing_rule_means_none(self):
        assert parse_crop_rule(None) == CropRule("none", 0.0)

    def test_margin_defaults_to_zero_and_ints_become_floats(self):
        assert parse_crop_rule({"mode": "nonzero"}) == CropRule("nonzero", 0.0)
        assert parse_crop_rule({"mode": "nonzero", "margin_mm": 3}).margin_mm == 3.0

    @pytest.mark.parametrize("mapping,match", [
        ({"mode": "head"}, r"field 'input\.crop\.mode' must be one of nonzero, none, got 'head'"),
        ({}, r"missing field 'input\.crop\.mode'"),
        ({"mode": 1}, r"field 'input\.crop\.mode' must be a string"),
        ({"mode": "nonzero", "margin_mm": -1}, r"field 'input\.crop\.margin_mm' must be a finite number >= 0"),
        ({"mode": "nonzero", "margin_mm": True}, r"field 'input\.crop\.margin_mm' must be a number"),
        ({"mode": "nonzero", "margin_mm": "5"}, r"field 'input\.crop\.margin_mm' must be a number"),
        ({"mode": "nonzero", "margin": 5}, r"field 'input\.crop\.margin' is not a crop setting"),
        ([1, 2], r"field 'input\.crop' must be an object"),
    ])
    def test_refuses_by_dotted_path(self, mapping, match):
        with pytest.raises(ModelError, match=r"^manifest " + match):
            parse_crop_rule(mapping, "input.crop")

    def test_another_prefix(self):
        with pytest.raises(ModelError, match=r"'preprocess\.crop\.mode'"):
            parse_crop_rule({"mode": "x"}, "preprocess.crop")


class TestOrientedProfiles:
    @pytest.mark.parametrize("axcodes", ["LPS", "ASR", "IRA"])
    def test_matches_the_reoriented_array(self, axcodes):
        from nibabel.orientations import axcodes2ornt, inv_ornt_aff

        from edge_infer.crop import oriented_profiles

        shape = (10, 12, 8)
        data = _scan(shape, boxes=(((0, 3), (5, 12), (2, 3)), ((7, 8), (0, 2), (6, 8))))
        tf = orientation_transform(inv_ornt_aff(axcodes2ornt(axcodes), shape), "RAS")
        got = oriented_profiles(foreground_profiles(data), tf)
        for g, want in zip(got, foreground_profiles(apply_orientation(data, tf))):
            np.testing.assert_array_equal(g, want)


class TestResampledProfiles:
    @pytest.mark.parametrize("spacing", [(1.0, 1.0, 3.0), (0.5, 2.0, 1.3)])
    def test_unoccupied_planes_stay_exactly_zero(self, spacing):
        from edge_infer.crop import resampled_profiles

        shape, target = (20, 11, 9), (1.0, 1.0, 1.0)
        data = _scan(shape, boxes=(((3, 9), (0, 4), (5, 9)), ((15, 16), (9, 10), (0, 1))))
        out = resample_linear(data, spacing, target)
        got = resampled_profiles(foreground_profiles(data), spacing, target, resampled_shape(shape, spacing, target))
        for g, want in zip(got, foreground_profiles(out)):
            assert g.shape == want.shape
            assert not (want & ~g).any()                      # every occupied plane is flagged
            assert (g & ~want).sum() <= 2 * 2                 # and at most a plane beside each run
