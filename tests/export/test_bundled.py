"""The bundled default model and sample scan work in the runtime (no torch needed)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from edge_infer.model import load_model
from export.data import zscore_nonzero
from export.phantoms import MODALITIES, brats_regions

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "edge_infer" / "models" / "default"
SAMPLE = REPO / "edge_infer" / "data" / "sample"


def _sample():
    image = np.stack([np.asarray(nib.load(SAMPLE / f"sample_{m}.nii.gz").dataobj, np.float32) for m in MODALITIES])
    seg = np.asarray(nib.load(SAMPLE / "sample_seg.nii.gz").dataobj)
    return zscore_nonzero(image), brats_regions(seg)


def _dice(a, b):
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2 * np.logical_and(a, b).sum() / s


class TestSample:
    def test_files_and_size(self):
        names = sorted(p.name for p in SAMPLE.glob("*.nii.gz"))
        assert names == sorted(f"sample_{m}.nii.gz" for m in (*MODALITIES, "seg"))
        assert sum(p.stat().st_size for p in SAMPLE.glob("*.nii.gz")) < 4.5e6
        img = nib.load(SAMPLE / "sample_t1.nii.gz")
        assert img.get_data_dtype() == np.int16 and nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert set(np.unique(np.asarray(nib.load(SAMPLE / "sample_seg.nii.gz").dataobj))) == {0, 1, 2, 4}


@pytest.mark.skipif(not (DEFAULT / "model.json").is_file(), reason="default model not built yet")
class TestDefaultModel:
    def test_manifest_and_size(self):
        m = json.loads((DEFAULT / "model.json").read_text())
        assert m["placeholder"] is False and "not for clinical use" in m["intended_use"]
        assert sum(p.stat().st_size for p in DEFAULT.iterdir()) < 2e6
        assert (DEFAULT / "MODEL_CARD.md").is_file()

    @pytest.mark.parametrize("backend,precision", [("onnx", "fp32"), ("onnx", "fp16"), ("tflite", "fp32"), ("tflite", "fp16")])
    def test_segments_the_sample(self, backend, precision):
        pytest.importorskip("ai_edge_litert") if backend == "tflite" else None
        loaded = load_model(DEFAULT, backend=backend, precision=precision, threads=2)
        image, truth = _sample()
        ks = range(8, image.shape[3], 6)                      # a few slices through the tumour
        h, w = loaded.manifest.tile
        batch = np.zeros((len(ks), 4, h, w), np.float32)
        batch[:, :, : image.shape[1], : image.shape[2]] = np.moveaxis(image[..., list(ks)], 3, 0)
        logits = loaded.backend.run(batch)[:, :, : image.shape[1], : image.shape[2]]
        prob = 1 / (1 + np.exp(-logits))
        thr = np.asarray(loaded.manifest.threshold)[None, :, None, None]
        pred, gt = prob > thr, np.moveaxis(truth[..., list(ks)], 3, 0).astype(bool)
        for r, name in enumerate(loaded.manifest.channels):
            assert _dice(pred[:, r], gt[:, r]) > 0.85, name


DEFAULT_3D = REPO / "edge_infer" / "models" / "default-3d"


def _tumour_block(image, truth, size=(96, 96)):
    """The sample's in-plane block of ``size`` centred on the tumour, all its slices."""
    centre = np.argwhere(truth[0]).mean(axis=0).astype(int)
    sl = tuple(slice(int(np.clip(c - s // 2, 0, n - s)), int(np.clip(c - s // 2, 0, n - s)) + s)
               for c, s, n in zip(centre[:2], size, image.shape[1:3]))
    return image[(slice(None), *sl)], truth[(slice(None), *sl)]


@pytest.mark.skipif(not (DEFAULT_3D / "model.json").is_file(), reason="3D default model not built yet")
class TestDefault3DModel:
    def test_manifest_and_size(self):
        m = json.loads((DEFAULT_3D / "model.json").read_text())
        assert m["dims"] == 3 and m["input"]["layout"] == "NCDHW" and len(m["input"]["tile"]) == 3
        assert m["placeholder"] is False and "not for clinical use" in m["intended_use"]
        assert sum(p.stat().st_size for p in DEFAULT_3D.iterdir()) < 2e6
        assert "make-default-3d" in (DEFAULT_3D / "MODEL_CARD.md").read_text()
        assert {(a["backend"], a["precision"]) for a in m["artifacts"]} == {("onnx", "fp32"), ("onnx", "fp16"), ("tflite", "fp32")}

    def test_listed_as_bundled(self):
        from edge_infer.model import bundled_models

        assert {"default", "default-3d"} <= set(bundled_models())

    @pytest.mark.parametrize("backend,precision", [("onnx", "fp32"), ("onnx", "fp16"), ("tflite", "fp32")])
    def test_segments_a_block_of_the_sample_by_sliding_window(self, backend, precision):
        from edge_infer.engines import Windows, run_windows
        from edge_infer.prepare import crop, pad, pad_widths

        pytest.importorskip("ai_edge_litert") if backend == "tflite" else None
        loaded = load_model(DEFAULT_3D, backend=backend, precision=precision, threads=2)
        m = loaded.manifest
        image, truth = _tumour_block(*_sample())             # one tile in-plane, padded in depth
        widths = pad_widths(image.shape[1:], m.tile, (m.divisible_by,) * 3)
        padded = np.ascontiguousarray(pad(image, widths))
        logits = np.empty((len(m.channels), *padded.shape[1:]), np.float32)
        run_windows(padded, loaded.backend.run, logits, Windows(tuple(m.tile), overlap=0.5))
        prob = 1 / (1 + np.exp(-crop(logits, widths)))
        pred = prob > np.asarray(m.threshold)[:, None, None, None]
        for r, name in enumerate(m.channels):
            assert _dice(pred[r], truth[r].astype(bool)) > 0.8, name
