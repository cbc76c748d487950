"""Tests of edge_infer.engines: tile geometry, blending weights and the two loops."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from edge_infer.engines import (Windows, batch_ranges, from_slice_major, gaussian_weights, monai_gaussian_weights,
                                run_windows, stream_slices, to_slice_major, window_slices, window_starts)


class TestWindowStarts:
    @pytest.mark.parametrize("size, tile, overlap", [(100, 32, 0.5), (64, 64, 0.5), (65, 64, 0.25), (240, 128, 0.5), (33, 16, 0.0)])
    def test_cover_and_step(self, size, tile, overlap):
        s = window_starts(size, tile, overlap)
        assert s[0] == 0 and s[-1] == size - tile
        covered = np.zeros(size, bool)
        for a in s:
            covered[a:a + tile] = True
        assert covered.all()
        if len(s) > 1:
            assert max(np.diff(s)) <= int(tile * (1 - overlap))

    def test_too_small(self):
        with pytest.raises(ValueError, match="pad it first"):
            window_starts(10, 16, 0.5)

    def test_bad_overlap(self):
        with pytest.raises(ValueError, match="overlap"):
            window_starts(10, 4, 1.0)


class TestWindowSlices:
    def test_count_is_product(self):
        w = window_slices((40, 32, 16), (16, 16, 16), 0.5)
        assert len(w) == len(window_starts(40, 16, 0.5)) * len(window_starts(32, 16, 0.5)) * 1


class TestGaussianWeights:
    def test_shape_peak_positive(self):
        w = gaussian_weights((16, 16, 8))
        assert w.shape == (16, 16, 8) and w.dtype == np.float32
        assert w.max() == pytest.approx(1.0) and w.min() > 0
        assert w[7:9, 7:9, 3:5].min() > w[0, 0, 0]
        assert w.argmax() == np.ravel_multi_index((8, 8, 4), w.shape)     # voxel t // 2, as nnU-Net

    @pytest.mark.parametrize("tile", [(32, 40, 40), (16, 16, 8), (7, 9)])
    def test_matches_nnunet_definition(self, tile):
        """nnU-Net v2's compute_gaussian as its predictor calls it: gaussian_filter of a delta at
        t // 2, sigma t / 8, scaled to a maximum of 10 in float16, zeros set to the smallest weight."""
        ndimage = pytest.importorskip("scipy.ndimage")
        delta = np.zeros(tile)
        delta[tuple(t // 2 for t in tile)] = 1
        ref = ndimage.gaussian_filter(delta, [t / 8 for t in tile], 0, mode="constant", cval=0)
        ref = (ref / (ref.max() / 10)).astype(np.float16)          # the predictor's dtype and value_scaling_factor
        ref[ref == 0] = ref[ref > 0].min()
        assert np.array_equal(gaussian_weights(tile), ref.astype(np.float32) / np.float32(10))


class TestMonaiRule:
    """``input.windows: monai``: MONAI's SlidingWindowInferer placement and Gaussian, checked
    against MONAI's own code."""

    @pytest.mark.parametrize("size, tile, overlap", [(128, 40, 0.5), (100, 32, 0.25), (40, 40, 0.5),
                                                     (45, 16, 0.625), (17, 16, 0.5)])
    def test_starts_are_dense_patch_slices(self, size, tile, overlap):
        from monai.data.utils import dense_patch_slices
        from monai.inferers.utils import _get_scan_interval

        interval = _get_scan_interval((size,), (tile,), 1, (overlap,))
        want = sorted({sl[0].start for sl in dense_patch_slices((size,), (tile,), interval)})
        assert window_starts(size, tile, overlap, "monai") == want

    def test_differs_from_nnunet_placement(self):
        assert window_starts(128, 40, 0.5, "monai") == [0, 20, 40, 60, 80, 88]
        assert window_starts(128, 40, 0.5) == [0, 18, 35, 53, 70, 88]

    @pytest.mark.parametrize("tile", [(16, 16, 8), (7, 9, 4)])
    def test_gaussian_is_compute_importance_map(self, tile):
        from monai.data.utils import compute_importance_map

        want = compute_importance_map(tile, mode="gaussian", sigma_scale=0.125, device="cpu").numpy()
        assert np.allclose(monai_gaussian_weights(tile), want, rtol=1e-6, atol=1e-7)

    @pytest.mark.parametrize("blending", ["gaussian", "constant"])
    def test_blended_output_is_sliding_window_inference(self, blending):
        """A model whose output depends on where its window lies (x + the window's mean): the
        blend matches MONAI's sliding_window_inference only with its placement and weights."""
        torch = pytest.importorskip("torch")
        from monai.inferers import sliding_window_inference

        vol = np.random.default_rng(5).normal(size=(2, 50, 37, 21)).astype(np.float32)
        want = sliding_window_inference(torch.from_numpy(vol[None]), (16, 16, 8), 1,
                                        lambda t: t + t.mean(dim=(2, 3, 4), keepdim=True),
                                        overlap=0.5, mode=blending).numpy()[0]
        for rule, same in (("monai", True), ("nnunet", False)):
            out = np.empty_like(vol)
            run_windows(vol, lambda x: x + x.mean(axis=(2, 3, 4), keepdims=True), out,
                        Windows((16, 16, 8), overlap=0.5, batch=2, blending=blending, rule=rule))
            assert np.allclose(out, want, atol=1e-5) is same


def identity_model(x):
    return x[:, :2].copy()


class TestSliceMajor:
    @pytest.mark.parametrize("axis", [0, 1, 2])
    def test_round_trip(self, axis):
        vol = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
        sm = to_slice_major(vol, axis)
        assert sm.shape[0] == vol.shape[1 + axis] and sm.shape[1] == 2
        assert np.array_equal(from_slice_major(sm[:, 0], axis), vol[0])


def run_slices(volume, run, out, **kw):
    """:func:`stream_slices` writing every batch's logits into ``out`` (``[S, K, H, W]``)."""
    def keep(s: int, e: int, y: np.ndarray) -> None:
        out[s:e] = y

    stream_slices(volume, run, keep, **kw)
    return out


class TestStreamSlicesIntoVolume:
    @pytest.mark.parametrize("batch", [1, 3, 64])
    def test_every_slice_through_model(self, batch):
        rng = np.random.default_rng(batch)
        vol = rng.normal(size=(7, 3, 6, 5)).astype(np.float32)
        out = np.empty((7, 2, 6, 5), np.float32)
        calls = []

        def model(x):
            calls.append(x.shape)
            assert x.flags.c_contiguous
            return identity_model(x)

        run_slices(vol, model, out, batch=batch)
        assert np.array_equal(out, vol[:, :2])
        assert sum(c[0] for c in calls) == 7
        assert all(c[0] <= batch for c in calls)

    def test_channels_last(self):
        vol = np.random.default_rng(1).normal(size=(6, 3, 4, 5)).astype(np.float32)
        out = np.empty((6, 2, 4, 5), np.float32)
        run_slices(vol, lambda x: x[..., :2].copy(), out, channels_last=True, batch=4)
        assert np.array_equal(out, vol[:, :2])


class TestStreamSlices:
    def test_consumer_gets_each_batch_in_order(self):
        vol = np.random.default_rng(3).normal(size=(7, 3, 4, 5)).astype(np.float32)
        seen, done = [], []
        stream_slices(vol, identity_model, lambda s, e, y: seen.append((s, e, y.copy())), batch=3,
                      progress=done.append)
        assert [(s, e) for s, e, _ in seen] == [(0, 3), (3, 6), (6, 7)] and done == [3, 3, 1]
        assert all(np.array_equal(y, vol[s:e, :2]) for s, e, y in seen)

    def test_channels_last_logits_come_channels_first(self):
        vol = np.random.default_rng(4).normal(size=(5, 3, 4, 6)).astype(np.float32)
        got = {}
        stream_slices(vol, lambda x: x[..., :2].copy(), lambda s, e, y: got.update({s: y.copy()}), batch=5,
                      channels_last=True)
        assert np.array_equal(got[0], vol[:, :2])


class TestStreamSlicesWorkers:
    def test_two_workers_cover_every_slice_once(self):
        vol = np.random.default_rng(5).normal(size=(9, 3, 4, 5)).astype(np.float32)
        used, got = [[], []], {}

        both = threading.Barrier(2, timeout=10)            # each worker's first call waits for the other's

        def runner(w):
            def run(x):
                if not used[w]:
                    both.wait()
                used[w].append(x.shape[0])
                return identity_model(x)
            return run

        stream_slices(vol, [runner(0), runner(1)], lambda s, e, y: got.update({(s, e): y.copy()}), batch=2)
        assert sorted(got) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 9)] and all(used)
        assert all(np.array_equal(y, vol[s:e, :2]) for (s, e), y in got.items())

    def test_a_free_worker_takes_the_next_batch(self):
        """Batches are not dealt in advance: a worker slowed down does fewer of them."""
        vol = np.zeros((12, 2, 4, 4), np.float32)
        calls = [0, 0]
        both = threading.Barrier(2, timeout=10)

        def runner(w, pause):
            def run(x):
                if not calls[w]:
                    both.wait()
                calls[w] += 1
                time.sleep(pause)
                return identity_model(x)
            return run

        stream_slices(vol, [runner(0, 0.05), runner(1, 0.0)], lambda s, e, y: None, batch=1)
        assert sum(calls) == 12 and calls[1] > calls[0]

    def test_a_failing_worker_stops_the_others(self):
        vol = np.zeros((40, 2, 4, 4), np.float32)
        calls = [0]
        both = threading.Barrier(2, timeout=10)

        def slow(x):
            if not calls[0]:
                both.wait()
            calls[0] += 1
            time.sleep(0.1)                                  # room for a busy machine's scheduling delays
            return identity_model(x)

        def broken(x):
            both.wait()
            raise RuntimeError("backend failed")

        with pytest.raises(RuntimeError, match="backend failed"):
            stream_slices(vol, [slow, broken], lambda s, e, y: None, batch=1)
        assert calls[0] <= 3

    def test_forked_sources_do_not_share_a_buffer(self):
        from edge_infer.prepare import SliceSource

        data = np.random.default_rng(6).normal(size=(2, 8, 6, 5)).astype(np.float32)
        src = SliceSource(np.moveaxis(data, 3, 1), [(0.0, 1.0, False)] * 2)
        got = {}
        stream_slices(src, [identity_model, identity_model], lambda s, e, y: got.update({s: y.copy()}), batch=1)
        assert np.array_equal(np.concatenate([got[k] for k in sorted(got)]), np.moveaxis(data, 3, 0)[:, :2])


class TestRunWindows:
    def test_identity_model_reconstructs_volume(self):
        """A model that returns its input must give back the volume whatever the tiling."""
        vol = np.random.default_rng(2).normal(size=(2, 20, 18, 9)).astype(np.float32)
        out = np.empty((2, 20, 18, 9), np.float32)
        run_windows(vol, lambda x: x.copy(), out, Windows((8, 8, 8), overlap=0.5, batch=3))
        assert np.allclose(out, vol, atol=1e-5)

    def test_blending_is_weighted(self):
        """With a model that outputs a per-window constant, overlap regions are weighted means."""
        vol = np.zeros((1, 12, 8, 8), np.float32)
        counter = iter(range(100))

        def model(x):
            return np.stack([np.full((1, *x.shape[2:]), float(next(counter)) - 0.5, np.float32) for _ in x])

        out = np.empty((1, 12, 8, 8), np.float32)
        run_windows(vol, model, out, Windows((8, 8, 8), overlap=0.5, batch=1))
        lo, hi = out.min(), out.max()
        assert -0.5 - 1e-6 <= lo < hi <= 1.5 + 1e-6   # weighted means of the three windows' values


class TestBatchRanges:
    def test_cover(self):
        assert batch_ranges(7, 3) == [(0, 3), (3, 6), (6, 7)]

    def test_bad(self):
        with pytest.raises(ValueError):
            batch_ranges(3, 0)
