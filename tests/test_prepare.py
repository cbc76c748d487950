"""Tests of edge_infer.prepare: pure array functions and their exact inverses."""

from __future__ import annotations

import numpy as np
import pytest

from edge_infer import prepare as P
from edge_infer.scan import voxel_spacing


def world(affine, ijk):
    return (affine @ np.r_[ijk, 1.0])[:3]


class TestOrientation:
    @pytest.mark.parametrize("diag", [(-1, 2, -3), (1, 1, 1), (-1, -1, 1), (2, -1, 1)])
    def test_voxel_keeps_its_world_position(self, diag):
        rng = np.random.default_rng(0)
        a = rng.random((2, 5, 6, 7)).astype(np.float32)
        aff = np.diag([*diag, 1.0])
        aff[:3, 3] = (10, -20, 30)
        tf = P.orientation_transform(aff, "RAS")
        o = P.apply_orientation(a, tf)
        naff = P.reoriented_affine(aff, tf, a.shape[1:])
        for ijk in [(0, 0, 0), (1, 2, 3), (4, 5, 6)]:
            new = np.rint(np.linalg.solve(naff, np.r_[world(aff, ijk), 1])[:3]).astype(int)
            assert o[1, new[0], new[1], new[2]] == a[1, ijk[0], ijk[1], ijk[2]]
        assert np.all(np.diag(naff)[:3] > 0)

    def test_permuted_axes(self):
        aff = np.array([[0, 0, 2, 0], [1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 0, 1.0]])
        a = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 2, 3, 4)
        tf = P.orientation_transform(aff, "RAS")
        o = P.apply_orientation(a, tf)
        assert o.shape == (1, 4, 2, 3)
        assert np.array_equal(P.apply_orientation(o, P.invert_transform(tf)), a)


class TestResample:
    def test_shape_and_extent(self):
        assert P.resampled_shape((100, 50, 10), (1.0, 2.0, 5.0), (1.0, 1.0, 1.0)) == (100, 100, 50)

    def test_linear_preserves_linear_ramp(self):
        ramp = np.arange(10, dtype=np.float32)[None, :, None, None] * np.ones((1, 10, 4, 4), np.float32)
        out = P.resample_linear(ramp, (2.0, 1.0, 1.0), (1.0, 1.0, 1.0))
        assert out.shape == (1, 20, 4, 4)
        inner = out[0, 1:-1, 0, 0]
        assert np.allclose(np.diff(inner), 0.5, atol=1e-5)

    def test_nearest_inverts_for_integer_ratio(self):
        rng = np.random.default_rng(1)
        mask = rng.integers(0, 5, (10, 8, 6)).astype(np.uint8)
        spacing, target = (2.0, 2.0, 3.0), (1.0, 1.0, 1.0)
        up = P.resample_nearest_to(mask, P.resampled_shape(mask.shape, spacing, target), spacing, target)
        back = P.resample_nearest_to(up, mask.shape, target, spacing)
        assert np.array_equal(back, mask)

    def test_affine_of_resampled_grid_keeps_centre(self):
        aff = np.diag([2.0, 2.0, 3.0, 1.0])
        shape = (10, 8, 6)
        new = P.resampled_affine(aff, shape, (2, 2, 3), (1, 1, 1))
        new_shape = P.resampled_shape(shape, (2, 2, 3), (1, 1, 1))
        c_old = world(aff, (np.array(shape) - 1) / 2)
        c_new = world(new, (np.array(new_shape) - 1) / 2)
        assert np.allclose(c_old, c_new)
        assert np.allclose(voxel_spacing(new), (1, 1, 1))


class TestNormalize:
    def test_zscore_nonzero_keeps_background(self):
        x = np.zeros((1, 4, 4, 4), np.float32)
        x[0, 1:3, 1:3, 1:3] = np.arange(8).reshape(2, 2, 2) + 10
        P.normalize(x, "zscore_nonzero")
        fg = x[0, 1:3, 1:3, 1:3]
        assert abs(fg.mean()) < 1e-5 and abs(fg.std() - 1) < 1e-4
        assert np.count_nonzero(x[0]) == 8 - np.count_nonzero(fg == 0)

    def test_empty_channel_untouched(self):
        x = np.zeros((2, 3, 3, 3), np.float32)
        x[1] = 5
        P.normalize(x, "zscore_nonzero")
        assert np.all(x[0] == 0) and np.all(x[1] == 0)

    def test_unknown(self):
        with pytest.raises(ValueError, match="unknown normalization"):
            P.normalize(np.ones((1, 2, 2, 2), np.float32), "bogus")


def reference_normalize(x: np.ndarray, method: str) -> np.ndarray:
    """Plain numpy, channel by channel: the definition every fast path must match."""
    out = x.astype(np.float64)
    for c in range(out.shape[0]):
        ch = out[c]
        if method == "zscore_nonzero":
            nz = ch != 0
            if nz.any():
                ch[nz] = (ch[nz] - ch[nz].mean()) / max(ch[nz].std(), 1e-8)
        elif method == "zscore":
            ch[...] = (ch - ch.mean()) / max(ch.std(), 1e-8)
        elif method == "minmax":
            ch[...] = (ch - ch.min()) / max(ch.max() - ch.min(), 1e-8)
    return out.astype(np.float32)


class TestNormalizedCopy:
    """The one-copy normalisation gives the reference values in either layout, for any view."""

    @pytest.mark.parametrize("method", ["zscore_nonzero", "zscore", "minmax", "none"])
    @pytest.mark.parametrize("slice_axis", [None, 0, 1, 2])
    def test_reference_values(self, method, slice_axis, monkeypatch):
        from edge_infer import moments as M

        monkeypatch.setattr(M, "SLAB_BYTES", 4 * 17 * 13 * 3)  # several slabs per channel
        rng = np.random.default_rng(1)
        x = rng.normal(500, 80, (3, 20, 17, 13)).astype(np.float32)
        x[:, :5] = 0
        x[1] = 0  # an empty channel
        view = x[:, ::-1, :, ::-1].transpose(0, 2, 1, 3)
        ref = reference_normalize(np.asarray(view), method)
        if slice_axis is not None:
            ref = np.ascontiguousarray(np.moveaxis(ref, 1 + slice_axis, 0))
        got = P.normalized_copy(view, method, slice_axis)
        assert got.shape == ref.shape and got.flags.c_contiguous and got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=2e-5)
        assert not np.shares_memory(got, x)
        inplace = np.array(view, dtype=np.float32, order="C")
        np.testing.assert_allclose(P.normalize(inplace, method), reference_normalize(np.asarray(view), method),
                                   atol=2e-5)

    def test_given_moments_give_the_same_bytes(self):
        from edge_infer.moments import moments_of

        x = np.random.default_rng(3).normal(100, 20, (2, 12, 10, 8)).astype(np.float32)
        x[:, :3] = 0
        given = tuple(moments_of(x[c]) for c in range(2))
        assert np.array_equal(P.normalized_copy(x, "zscore_nonzero", 2, given), P.normalized_copy(x, "zscore_nonzero", 2))

    def test_unknown(self):
        with pytest.raises(ValueError, match="unknown normalization"):
            P.normalized_copy(np.ones((1, 2, 2, 2), np.float32), "bogus")


class TestSliceSource:
    """Lazily prepared slices equal the full prepared copy, padded, byte for byte."""

    @pytest.fixture
    def scan(self):
        x = np.random.default_rng(5).normal(200, 40, (3, 12, 10, 9)).astype(np.float32)
        x[:, :3] = 0
        return np.asfortranarray(x), np.diag([-1.0, 1.0, 1.0, 1.0])  # LAS: reorientation is a flip

    @pytest.mark.parametrize("batch", [1, 4, 9])
    def test_same_bytes_as_the_prepared_copy(self, scan, batch):
        data, aff = scan
        full = P.prepare(data, aff, "RAS", (1.0, 1.0, 1.0), "zscore_nonzero", slice_axis=2)
        lazy = P.prepare(data, aff, "RAS", (1.0, 1.0, 1.0), "zscore_nonzero", slice_axis=2, lazy=True)
        assert isinstance(lazy.data, P.SliceSource) and lazy.grid_shape == full.grid_shape
        widths = [(1, 2), (0, 3)]
        want = P.pad(full.data, widths)
        src = lazy.data.padded(widths)
        assert src.shape == want.shape
        got = np.concatenate([src[s:min(s + batch, len(src))].copy() for s in range(0, len(src), batch)])
        assert np.array_equal(got, want)

    def test_resampling_scan_is_prepared_in_full(self, scan):
        data, _ = scan
        prep = P.prepare(data, np.diag([2.0, 1.0, 1.0, 1.0]), "RAS", (1.0, 1.0, 1.0), "zscore_nonzero",
                         slice_axis=2, lazy=True)
        assert isinstance(prep.data, np.ndarray) and prep.resampled

    def test_steps_refused(self, scan):
        data, aff = scan
        src = P.prepare(data, aff, "RAS", (1.0, 1.0, 1.0), "none", slice_axis=2, lazy=True).data
        with pytest.raises(IndexError, match="contiguous ranges"):
            src[::2]


class TestPad:
    def test_widths(self):
        assert P.pad_widths((30, 17, 5), (1, 1, 8), (16, 16, 1)) == [(1, 1), (7, 8), (1, 2)]

    def test_round_trip(self):
        x = np.arange(2 * 5 * 6 * 7, dtype=np.float32).reshape(2, 5, 6, 7)
        w = P.pad_widths(x.shape[1:], (8, 8, 8), (4, 4, 4))
        padded = P.pad(x, w)
        assert padded.shape == (2, 8, 8, 8)
        assert np.array_equal(P.crop(padded, w), x)


class TestClippedZscore:
    """nnU-Net's CT normalisation: clip to fixed bounds, then fixed mean and std, per channel."""

    def test_matches_definition_per_channel(self):
        from edge_infer.manifest_v2 import Intensity

        rng = np.random.default_rng(5)
        x = (rng.random((2, 5, 4, 3)) * 400 - 200).astype(np.float32)
        its = (Intensity(-50, 80, 10, 20), Intensity(0, 100, 50, 5))
        out = P.clipped_zscore(x, its)
        for c, it in enumerate(its):
            want = (np.clip(x[c].astype(np.float64), it.low, it.high) - it.mean) / it.std
            assert np.allclose(out[c], want, atol=1e-5)
        assert out.dtype == np.float32 and not np.shares_memory(out, x)

    def test_channel_count_must_match(self):
        from edge_infer.manifest_v2 import Intensity

        with pytest.raises(ValueError, match="one intensity entry per channel"):
            P.clipped_zscore(np.zeros((2, 2, 2, 2), np.float32), (Intensity(0, 1, 0, 1),))


class TestPrepareAndRestore:
    def test_restore_is_exact_inverse(self):
        """A mask carried forward (orient + nearest upsampling) comes back voxel for voxel."""
        rng = np.random.default_rng(3)
        data = rng.random((1, 12, 10, 6)).astype(np.float32) + 1
        truth = rng.integers(0, 3, (12, 10, 6)).astype(np.uint8)
        aff = np.diag([-2.0, 2.0, 3.0, 1.0])
        prep = P.prepare(data, aff, "RAS", (1.0, 1.0, 1.0), "none")
        assert prep.resampled and prep.data.shape == (1, 24, 20, 18)
        oriented = P.apply_orientation(truth, prep.transform)
        forward = P.resample_nearest_to(oriented, prep.data.shape[1:], prep.oriented_spacing, prep.target_spacing)
        back = P.restore_mask(forward, prep)
        assert back.shape == truth.shape and np.array_equal(back, truth)

    def test_does_not_modify_input(self):
        data = np.ones((1, 4, 4, 4), np.float32)
        data[0, 0] = 3
        before = data.copy()
        P.prepare(data, np.eye(4), "RAS", (1, 1, 1), "zscore_nonzero")
        assert np.array_equal(data, before)
