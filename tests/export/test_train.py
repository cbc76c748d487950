"""Training: sampling, loss, a few steps lowering the loss, checkpoints and resume."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.errors import CheckpointError  # noqa: E402
from export.losses import bce_dice_loss, dice, region_dice  # noqa: E402
from export.train import (TrainConfig, model_from_checkpoint, read_checkpoint, sample_patches,  # noqa: E402
                          sample_slices, save_checkpoint, sweep_thresholds, train)
from export.zoo import create_model  # noqa: E402


class TestDice:
    def test_perfect_and_empty(self):
        a = np.array([0, 1, 1, 0], bool)
        assert dice(a, a) == 1.0
        assert dice(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
        assert dice(a, ~a) == 0.0

    def test_region_dice_per_threshold(self):
        prob = np.array([[0.2, 0.8], [0.6, 0.6]], np.float32)
        truth = np.array([[0, 1], [1, 1]], np.uint8)
        assert region_dice(prob, truth, [0.5, 0.7]) == [1.0, 0.0]


class TestLoss:
    def test_lower_for_better_prediction(self):
        y = (torch.rand(2, 3, 8, 8) > 0.5).float()
        good = bce_dice_loss((y * 2 - 1) * 5, y)
        bad = bce_dice_loss(-(y * 2 - 1) * 5, y)
        assert good < 0.1 < bad


class TestSampling:
    def test_slices_are_tumour_biased(self, tiny_cases):
        rng = np.random.default_rng(0)
        x, y = sample_slices(tiny_cases, 32, (32, 32), 1.0, rng)
        assert x.shape == (32, 4, 32, 32) and y.shape == (32, 3, 32, 32)
        assert (y[:, 0].reshape(32, -1).max(1) > 0).all()

    def test_patches(self, tiny_cases):
        x, y = sample_patches(tiny_cases, 2, (16, 16, 16), 0.5, np.random.default_rng(0))
        assert x.shape == (2, 4, 16, 16, 16) and y.shape == (2, 3, 16, 16, 16)

    def test_crop_larger_than_case_is_padded(self, tiny_cases):
        x, _ = sample_slices(tiny_cases, 1, (96, 80), 0.5, np.random.default_rng(0))
        assert x.shape == (1, 4, 96, 80)


class TestTrain:
    def test_few_steps_lower_the_loss(self, tiny_cases):
        torch.manual_seed(0)
        model = create_model("flat_unet2d", features=8, depth=2)
        cfg = TrainConfig(steps=30, batch=4, tile=(32, 32), lr=5e-3, lr_step=100, threads=2)
        losses = train(model, tiny_cases, cfg, progress=False)
        assert np.mean(losses[-5:]) < np.mean(losses[:5])

    def test_3d_trains(self, tiny_cases):
        model = create_model("flat_unet3d", features=2, depth=2)
        cfg = TrainConfig(arch="flat_unet3d", steps=2, batch=1, tile=(16, 16, 16), threads=2)
        assert len(train(model, tiny_cases, cfg, progress=False)) == 2

    def test_checkpoint_and_resume(self, tiny_cases, tmp_path):
        ckpt = tmp_path / "ck.pt"
        model = create_model("flat_unet2d", features=4, depth=2)
        cfg = TrainConfig(steps=3, batch=2, tile=(32, 32), threads=2)
        train(model, tiny_cases, cfg, checkpoint=ckpt, checkpoint_every=1, progress=False)
        assert read_checkpoint(ckpt)["step"] == 3
        longer = TrainConfig(steps=5, batch=2, tile=(32, 32), threads=2)
        losses = train(model, tiny_cases, longer, checkpoint=ckpt, resume=True, progress=False)
        assert len(losses) == 2 and read_checkpoint(ckpt)["step"] == 5
        again, _ = model_from_checkpoint(ckpt)
        for a, b in zip(again.state_dict().values(), model.state_dict().values()):
            assert torch.equal(a, b)


class TestCheckpointErrors:
    def test_wrong_architecture(self, tmp_path):
        ckpt = save_checkpoint(tmp_path / "a.pt", create_model("flat_unet2d", features=4, depth=2))
        with pytest.raises(CheckpointError, match="holds a flat_unet2d model, not unet2d"):
            model_from_checkpoint(ckpt, arch="unet2d")

    def test_mismatched_weights(self, tmp_path):
        ckpt = tmp_path / "b.pt"
        small = create_model("flat_unet2d", features=4, depth=2)
        save_checkpoint(ckpt, small)
        state = torch.load(ckpt, weights_only=False)
        state["model_config"]["features"] = 8
        state["model_config"].pop("enc")
        state["model_config"].pop("dec")
        torch.save(state, ckpt)
        with pytest.raises(CheckpointError, match="does not match architecture flat_unet2d"):
            model_from_checkpoint(ckpt)

    def test_not_a_checkpoint(self, tmp_path):
        bad = tmp_path / "c.pt"
        bad.write_bytes(b"not a checkpoint")
        with pytest.raises(CheckpointError, match="not readable"):
            read_checkpoint(bad)


class TestThresholdSweep:
    def test_finds_the_separating_threshold(self, tiny_cases):
        case = tiny_cases[0]
        prob = np.where(case.target > 0, 0.7, 0.3).astype(np.float32)
        sweep = sweep_thresholds([prob], [case])
        assert 0.3 <= sweep["global"] < 0.7
        assert sweep["global_dice"]["WT"] == 1.0


class TestPredictLogits:
    @staticmethod
    def _pointwise(x):
        assert x.shape[2:] == (16, 16, 8), "a fixed-tile model sees only its tile"
        return 2.0 * x[:, :3] - x[:, 3:4]

    def test_3d_fixed_tile_runs_windows_like_the_runtime(self):
        from export.train import predict_logits

        image = np.random.default_rng(0).standard_normal((4, 30, 20, 11)).astype(np.float32)
        got = predict_logits(self._pointwise, image, 3, 8, tile=(16, 16, 8))
        want = 2.0 * image[:3] - image[3:4]
        assert got.shape == (3, 30, 20, 11)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
