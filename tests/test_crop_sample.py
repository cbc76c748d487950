"""Cropping with the real bundled models on the bundled sample: the masks equal the uncropped
ones (Dice >= 0.995 per region) while the network sees fewer voxels."""

from __future__ import annotations

import numpy as np
import pytest

from edge_infer.crop import (align_box, box_slices, box_voxels, foreground_box, grow_box, margin_voxels,
                             place_in_full)
from edge_infer.engines import Windows, run_windows
from edge_infer.model import bundled_models, load_model
from edge_infer.nifti import find_case_files, read_nifti_files
from edge_infer.prepare import crop, normalize, pad, pad_widths
from edge_infer.samples import sample_case

pytestmark = pytest.mark.slow


def _dice(a, b):
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


@pytest.fixture(scope="module")
def sample():
    scan = read_nifti_files(find_case_files(sample_case()), ("t1", "t1ce", "t2", "flair"))
    raw = np.asarray(scan.data)
    return raw, normalize(raw.copy(), "zscore_nonzero")


def _regions(logits, threshold):
    return logits > np.log(np.asarray(threshold) / (1 - np.asarray(threshold)))[:, None, None, None]


def _box(raw, m, axes=3):
    """The foreground box, 8 mm margin, aligned to the model (on the first ``axes`` axes only)."""
    box = grow_box(foreground_box(raw), margin_voxels(8.0, (1.0, 1.0, 1.0)), raw.shape[1:])
    aligned, _ = align_box(box[:axes], raw.shape[1:1 + axes], m.divisible_by, m.tile if axes == 3 else None)
    return aligned + tuple((0, n) for n in raw.shape[1 + axes:])


def _setup(sample, name, axes=3):
    raw, image = sample
    loaded = load_model(bundled_models()[name], backend="onnx", threads=2)
    return raw, image, loaded, loaded.manifest, _box(raw, loaded.manifest, axes)


def _windows(loaded, image):
    m = loaded.manifest
    widths = pad_widths(image.shape[1:], m.tile, (m.divisible_by,) * 3)
    padded = np.ascontiguousarray(pad(image, widths))
    out = np.empty((len(m.channels), *padded.shape[1:]), np.float32)
    run_windows(padded, loaded.backend.run, out, Windows(tuple(m.tile), overlap=0.5))
    return crop(out, widths), padded.shape[1:]


@pytest.mark.skipif("default-3d" not in bundled_models(), reason="3D default model not bundled")
class TestCropped3D:
    def test_same_masks_on_fewer_voxels(self, sample):
        raw, image, loaded, m, box = _setup(sample, "default-3d")
        full, full_grid = _windows(loaded, image)
        part, part_grid = _windows(loaded, np.ascontiguousarray(image[(slice(None), *box_slices(box))]))
        cropped = place_in_full(_regions(part, m.threshold), box, raw.shape[1:])
        reference = _regions(full, m.threshold)
        assert box_voxels(box) < 0.8 * raw[0].size
        assert np.prod(part_grid) < np.prod(full_grid)
        for r, name in enumerate(m.channels):
            assert reference[r].any(), name
            assert _dice(cropped[r], reference[r]) >= 0.995, name


@pytest.mark.skipif("default" not in bundled_models(), reason="2D default model not bundled")
class TestCropped2DInPlane:
    def test_dynamic_onnx_planes_cropped_in_plane(self, sample):
        raw, image, loaded, m, box = _setup(sample, "default", axes=2)   # in-plane only: every slice is run

        def logits(vol):
            widths = pad_widths(vol.shape[1:3], (1, 1), (m.divisible_by,) * 2)
            slices = np.ascontiguousarray(pad(np.moveaxis(vol, 3, 0), widths))   # [K, C, H, W]
            out = np.concatenate([loaded.backend.run(slices[k:k + 8]) for k in range(0, len(slices), 8)])
            return np.moveaxis(crop(out, widths), 0, 3)

        full = _regions(logits(image), m.threshold)
        cropped = place_in_full(_regions(logits(image[(slice(None), *box_slices(box))]), m.threshold), box,
                                raw.shape[1:])
        assert box_voxels(box) < 0.8 * raw[0].size
        for r, name in enumerate(m.channels):
            assert full[r].any(), name
            assert _dice(cropped[r], full[r]) >= 0.995, name
