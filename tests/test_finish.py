"""Tests of edge_infer.finish: regions, labels, components, volumes."""

from __future__ import annotations

import numpy as np
import pytest

from edge_infer.finish import (
    clean_labels,
    keep_largest_component,
    label_components,
    label_volumes_ml,
    labels_from_regions,
    logit_thresholds,
    regions_from_logits,
    remove_small_components,
)
from edge_infer.manifest import Label

BRATS = (Label(2, "edema", "WT"), Label(1, "core", "TC"), Label(4, "enhancing", "ET"))


class TestRegionsFromLogits:
    def test_same_as_thresholding_sigmoid(self):
        rng = np.random.default_rng(0)
        x = rng.normal(0, 3, size=(3, 50, 40)).astype(np.float32)
        t = (0.5, 0.3, 0.9)
        probs = 1 / (1 + np.exp(-x.astype(np.float64)))
        expect = probs > np.asarray(t)[:, None, None]
        assert np.array_equal(regions_from_logits(x, t, "sigmoid"), expect)

    def test_extreme_thresholds(self):
        x = np.array([[-1e30, 0.0, 1e30]], np.float32)
        assert regions_from_logits(x, (0.0,), "sigmoid").tolist() == [[True, True, True]]
        assert regions_from_logits(x, (1.0,), "sigmoid").tolist() == [[False, False, False]]
        assert logit_thresholds((0.5,))[0] == 0

    def test_softmax_argmax(self):
        x = np.array([[2.0, -1.0], [1.0, 3.0]], np.float32)
        r = regions_from_logits(x, (0.5, 0.5), "softmax")
        assert r.tolist() == [[True, False], [False, True]]


class TestLabelsFromRegions:
    def test_nested_brats(self):
        wt = np.array([1, 1, 1, 0], bool)
        tc = np.array([0, 1, 1, 0], bool)
        et = np.array([0, 0, 1, 0], bool)
        out = labels_from_regions(np.stack([wt, tc, et]), BRATS, ("WT", "TC", "ET"))
        assert out.tolist() == [2, 1, 4, 0] and out.dtype == np.uint8


class TestLabelComponents:
    def test_against_bruteforce(self):
        rng = np.random.default_rng(0)
        m = rng.random((12, 11, 9)) > 0.6
        labels, n = label_components(m)
        assert labels[~m].max() == 0 and labels[m].min() >= 1
        # every pair of face neighbours in the mask shares a label, and the count is minimal
        for ax in range(3):
            a = [slice(None)] * 3
            b = [slice(None)] * 3
            a[ax], b[ax] = slice(None, -1), slice(1, None)
            both = m[tuple(a)] & m[tuple(b)]
            assert np.array_equal(labels[tuple(a)][both], labels[tuple(b)][both])
        assert n == len(np.unique(labels[m]))
        # flood fill from one voxel of each label reaches exactly that label's voxels
        for lab in np.unique(labels[m])[:5]:
            seed = tuple(np.argwhere(labels == lab)[0])
            seen = {seed}
            stack = [seed]
            while stack:
                p = stack.pop()
                for ax in range(3):
                    for d in (-1, 1):
                        q = list(p)
                        q[ax] += d
                        q = tuple(q)
                        if all(0 <= q[i] < m.shape[i] for i in range(3)) and m[q] and q not in seen:
                            seen.add(q)
                            stack.append(q)
            assert len(seen) == int((labels == lab).sum())

    def test_diagonal_is_not_connected(self):
        m = np.zeros((3, 3), bool)
        m[0, 0] = m[1, 1] = True
        assert label_components(m)[1] == 2

    def test_empty(self):
        labels, n = label_components(np.zeros((4, 4, 4), bool))
        assert n == 0 and labels.max() == 0


class TestComponentFilters:
    def make(self):
        m = np.zeros((20, 20, 20), bool)
        m[2:10, 2:10, 2:10] = True  # 512
        m[15:17, 15:17, 15:17] = True  # 8
        m[0, 19, 0] = True  # 1
        return m

    def test_keep_largest(self):
        assert keep_largest_component(self.make()).sum() == 512

    def test_remove_small(self):
        assert remove_small_components(self.make(), 8).sum() == 520
        assert remove_small_components(self.make(), 9).sum() == 512

    def test_clean_labels_keeps_values(self):
        lab = self.make().astype(np.uint8) * 2
        lab[5, 5, 5] = 4
        out = clean_labels(lab, keep_largest=True)
        assert out[5, 5, 5] == 4 and out[16, 16, 16] == 0 and (out == 2).sum() == 511


class TestLabelVolumes:
    def test_ml(self):
        lab = np.zeros((10, 10, 10), np.uint8)
        lab[:5] = 2
        lab[0, 0, :4] = 4
        v = label_volumes_ml(lab, (1.0, 1.0, 2.0), BRATS)
        assert v == {"edema": pytest.approx(0.992), "core": 0.0, "enhancing": pytest.approx(0.008)}
