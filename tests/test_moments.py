"""Tests of edge_infer.moments: one-pass channel statistics and the scale of each normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from edge_infer import moments as M
from edge_infer.moments import moments_of, scale_for


@pytest.fixture
def small_slabs(monkeypatch):
    monkeypatch.setattr(M, "SLAB_BYTES", 4 * 30 * 20 * 3)  # several slabs per channel


class TestMomentsOf:
    def test_against_numpy(self, small_slabs):
        x = np.random.default_rng(0).normal(300, 50, (40, 30, 20)).astype(np.float32)
        x[:10] = 0
        m = moments_of(x)
        nz = x[x != 0].astype(np.float64)
        assert (m.size, m.nonzero) == (x.size, nz.size)
        assert m.mean == pytest.approx(nz.mean(), rel=1e-12)
        assert m.m2 == pytest.approx(((nz - nz.mean()) ** 2).sum(), rel=1e-9)
        assert (m.lo, m.hi) == (float(x.min()), float(x.max()))

    def test_any_view_same_result(self, small_slabs):
        x = np.random.default_rng(1).integers(0, 900, (16, 12, 10)).astype(np.float32)
        a, b = moments_of(x), moments_of(np.asfortranarray(x)[::-1].transpose(2, 0, 1))
        assert a.nonzero == b.nonzero and a.mean == pytest.approx(b.mean) and a.m2 == pytest.approx(b.m2)

    def test_large_offset_is_stable(self, small_slabs):
        """Intensities ~1e5 with std 1: the merged moments keep the std to 1e-5 (float32
        itself holds such voxels only to 0.008, a hundredth of a std)."""
        ch = (1e5 + np.random.default_rng(2).normal(0, 1, (40, 30, 20))).astype(np.float32)
        m = moments_of(ch)
        v = ch.astype(np.float64)
        assert abs(np.sqrt(m.m2 / m.nonzero) - v.std()) / v.std() < 1e-5

    def test_empty_and_all_zero(self):
        assert moments_of(np.zeros((4, 4, 4), np.float32)).nonzero == 0
        assert moments_of(np.zeros((0, 4, 4), np.float32)).size == 0

    def test_nan_shows_in_lo_hi(self):
        x = np.ones((4, 4, 4), np.float32)
        x[1, 2, 3] = np.nan
        m = moments_of(x)
        assert not (np.isfinite(m.lo) and np.isfinite(m.hi))


class TestScaleFor:
    X = np.array([0, 0, 0, 2, 4, 6], np.float32).reshape(1, 2, 3)

    def test_zscore_nonzero(self):
        off, scale, keep = scale_for(moments_of(self.X), "zscore_nonzero")
        assert off == pytest.approx(4.0) and 1 / scale == pytest.approx(np.std([2, 4, 6])) and keep

    def test_zscore_over_all_voxels(self):
        off, scale, keep = scale_for(moments_of(self.X), "zscore")
        assert off == pytest.approx(self.X.mean()) and 1 / scale == pytest.approx(self.X.std()) and not keep

    def test_minmax_and_none(self):
        assert scale_for(moments_of(self.X), "minmax") == (0.0, pytest.approx(1 / 6), False)
        assert scale_for(moments_of(self.X), "none") == (0.0, 1.0, False)

    def test_all_zero_channel_left_alone(self):
        assert scale_for(moments_of(np.zeros((2, 2, 2), np.float32)), "zscore_nonzero") == (0.0, 1.0, False)

    def test_unknown(self):
        with pytest.raises(ValueError, match="unknown normalization 'bogus'"):
            scale_for(moments_of(self.X), "bogus")


class TestMomentsSum:
    @pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
    def test_non_finite_in_a_middle_slab_reaches_lo_or_hi(self, small_slabs, bad):
        x = np.ones((40, 30, 20), np.float32)
        x[20, 5, 5] = bad                       # slab 2 of 14 (3 planes each)
        acc = M.MomentsSum(x.size)
        for sl in M.slabs(40, 30 * 20):
            acc.add(x[sl])
        m = acc.result()
        assert len(M.slabs(40, 30 * 20)) > 2
        want_lo, want_hi = (bad, bad) if np.isnan(bad) else (min(1.0, bad), max(1.0, bad))
        np.testing.assert_array_equal([m.lo, m.hi], [want_lo, want_hi])

    def test_nan_in_first_slab_is_kept(self, small_slabs):
        x = np.ones((40, 30, 20), np.float32)
        x[0, 0, 0] = np.nan
        assert np.isnan(moments_of(x).lo) and np.isnan(moments_of(x).hi)


class TestOverBox:
    def test_equals_the_moments_of_the_cropped_channel(self):
        rng = np.random.default_rng(4)
        ch = np.zeros((20, 18, 16), np.float32)
        ch[3:15, 2:12, 5:13] = rng.uniform(0, 500, (12, 10, 8)).astype(np.float32)
        ch[6:8, 6:8, 6:8] = 0.0                             # zeros inside the box count too
        box = (slice(3, 15), slice(2, 12), slice(5, 13))
        got, want = M.over_box(moments_of(ch), ch[box].size), moments_of(ch[box])
        assert (got.size, got.nonzero) == (want.size, want.nonzero)
        assert got.mean == pytest.approx(want.mean) and got.m2 == pytest.approx(want.m2)
        assert scale_for(got, "zscore") == pytest.approx(scale_for(want, "zscore"))
        assert scale_for(got, "zscore") != pytest.approx(scale_for(moments_of(ch), "zscore"))

    @pytest.mark.parametrize("voxels", [5, 10**6])
    def test_a_box_that_cannot_hold_the_channel_is_refused(self, voxels):
        ch = np.zeros((10, 10, 10), np.float32)
        ch[:2, :2, :2] = 1.0                                # 8 nonzero voxels of 1000
        with pytest.raises(ValueError, match="cannot hold"):
            M.over_box(moments_of(ch), voxels)
