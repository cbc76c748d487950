"""Skipping empty units exactly (edge_infer.skip): one class per public function.

The fake model's output for an all-background input is deliberately not background, so a
skipped unit that assumed zeros would fail these tests.
"""

from __future__ import annotations

import numpy as np
import pytest

from edge_infer.crop import foreground_profiles
from edge_infer.engines import window_slices
from edge_infer.moments import moments_of, scale_for
from edge_infer.skip import background_output, background_unit, background_values, empty_slices, empty_windows


def fake_run(x: np.ndarray) -> np.ndarray:
    """A 'model' ``[B, C, *s] -> [B, 3, *s]`` whose output for zeros is (2, -1, 0.5), not background,
    and which depends on position so a shifted or padded unit gives another output."""
    s = x.sum(axis=1, keepdims=True)
    ramp = np.arange(x.shape[-1], dtype=np.float32) * 0.01
    return np.concatenate([s + 2.0 + ramp, s * 2 - 1.0, np.cos(s) - 0.5 + ramp], axis=1).astype(np.float32)


def _scan(shape=(6, 8, 10)):
    data = np.zeros((2, *shape), np.float32)
    data[0, 2:4, 1:5, 3:6] = 1.5
    data[1, 3, 6, 4] = -2.0
    return data


class TestBackgroundValues:
    def test_zero_stays_zero_where_kept(self):
        assert background_values([(3.0, 0.5, True), (0.0, 1.0, False)]).tolist() == [0.0, 0.0]

    def test_zscore_and_minmax_move_zero(self):
        data = _scan()
        got = background_values([scale_for(moments_of(ch), "zscore") for ch in data])
        off, sc, _ = scale_for(moments_of(data[0]), "zscore")
        assert got[0] == pytest.approx(-off * sc) and got[0] < 0
        assert background_values([(-2.0, 0.25, False)]).tolist() == [0.5]


class TestEmptySlices:
    def test_slices_without_foreground_along_each_axis(self):
        prof = foreground_profiles(_scan())
        assert empty_slices(prof[0]).tolist() == [0, 1, 4, 5]
        assert empty_slices(prof[2]).tolist() == [0, 1, 2, 6, 7, 8, 9]

    def test_reused_output_equals_a_direct_call_on_every_skipped_slice(self):
        data = _scan()
        axis = 2
        slices = np.moveaxis(data, 1 + axis, 0)                  # [S, C, H, W]
        empty = empty_slices(foreground_profiles(data)[axis])
        once = background_output(fake_run, slices[empty[0]])
        direct = fake_run(np.ascontiguousarray(slices))
        assert not np.allclose(once, 0)                           # the model's background is not background
        for k in empty:
            np.testing.assert_array_equal(once, direct[k])
        busy = np.setdiff1d(np.arange(len(slices)), empty)
        assert all(not np.array_equal(once, direct[k]) for k in busy)


class TestEmptyWindows:
    def _setup(self, pad):
        data = _scan((12, 12, 12))
        padded = np.pad(data, [(0, 0)] + [pad] * 3)
        windows = window_slices(padded.shape[1:], (4, 4, 4), 0.5)
        return data, padded, windows

    @pytest.mark.parametrize("pad", [(0, 0), (2, 2)])
    def test_flagged_windows_see_only_background(self, pad):
        data, padded, windows = self._setup(pad)
        skip = empty_windows(windows, foreground_profiles(data), [pad] * 3)
        assert skip.any() and not skip.all()
        for w, s in zip(windows, skip):
            if s:
                assert not padded[(slice(None), *w)].any()

    def test_no_window_over_foreground_is_flagged(self):
        data, _, windows = self._setup((0, 0))
        skip = empty_windows(windows, foreground_profiles(data))
        fg = [bool(data[(slice(None), *w)].any()) for w in windows]
        assert not any(s and f for s, f in zip(skip, fg))

    def test_padding_unlike_background_is_computed(self):
        data, _, windows = self._setup((2, 2))
        prof = foreground_profiles(data)
        uniform = empty_windows(windows, prof, [(2, 2)] * 3, uniform_padding=True)
        strict = empty_windows(windows, prof, [(2, 2)] * 3, uniform_padding=False)
        assert strict.sum() < uniform.sum()
        for w, s in zip(windows, strict):
            if s:
                assert all(sl.start >= 2 and sl.stop <= 14 for sl in w)

    def test_reused_output_equals_a_direct_call_on_every_skipped_window(self):
        data, padded, windows = self._setup((2, 2))
        skip = empty_windows(windows, foreground_profiles(data), [(2, 2)] * 3)
        first = windows[int(np.flatnonzero(skip)[0])]
        once = background_output(fake_run, padded[(slice(None), *first)])
        for w in np.array(windows, dtype=object)[skip]:
            np.testing.assert_array_equal(once, fake_run(padded[(slice(None), *w)][None])[0])


class TestBackgroundUnit:
    def test_values_inside_zero_padding_outside(self):
        unit = background_unit(np.array([0.5, -1.0], np.float32), (4, 5), inner=(slice(1, 3), slice(0, 5)))
        assert unit.shape == (2, 4, 5)
        assert (unit[:, 1:3] == np.array([0.5, -1.0])[:, None, None]).all()
        assert not unit[:, 0].any() and not unit[:, 3:].any()

    def test_matches_a_normalised_empty_slice(self):
        from edge_infer.prepare import normalize

        data = _scan()
        values = background_values([scale_for(moments_of(ch), "zscore") for ch in data])
        norm = normalize(data.copy(), "zscore")
        np.testing.assert_allclose(background_unit(values, (8, 10)), norm[:, 0], rtol=1e-5)


class TestBackgroundOutput:
    def test_equals_a_direct_call_and_is_not_zero(self):
        unit = background_unit(np.array([0.0, 0.0], np.float32), (3, 4))
        got = background_output(fake_run, unit)
        np.testing.assert_array_equal(got, fake_run(unit[None])[0])
        assert got[0, 0, 0] == pytest.approx(2.0) and got[1, 0, 0] == pytest.approx(-1.0)

    def test_read_only_so_skipped_units_share_it(self):
        got = background_output(fake_run, np.zeros((2, 3, 3), np.float32))
        with pytest.raises(ValueError, match="read-only"):
            got[...] = 0

    def test_channels_last(self):
        unit = background_unit(np.array([1.0, 2.0], np.float32), (3, 4))

        def run_nhwc(x):
            return np.moveaxis(fake_run(np.moveaxis(x, -1, 1)), 1, -1)

        np.testing.assert_allclose(background_output(run_nhwc, unit, channels_last=True), fake_run(unit[None])[0])

    def test_calls_the_model_once(self):
        calls = []

        def counting(x):
            calls.append(x.shape)
            return fake_run(x)

        background_output(counting, np.zeros((2, 5, 5), np.float32))
        assert calls == [(1, 2, 5, 5)]
