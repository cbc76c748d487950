"""The model registry and every registered architecture's forward pass."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from export.errors import UnknownModelError  # noqa: E402
from export.zoo import create_model, list_models  # noqa: E402
from export.zoo.segnet import exportable_unpool, switch_pool, switch_unpool  # noqa: E402

from export_helpers import TINY, tiny_shape  # noqa: E402


class TestRegistry:
    def test_has_the_issue_architectures(self):
        assert set(list_models()) >= {"unet2d", "unet3d", "flat_unet2d", "flat_unet3d", "mobilenetv3_lraspp",
                                      "mobilenetv3_lraspp_skip", "segnet"}

    def test_every_model_has_tiny_settings(self):
        assert set(list_models()) == set(TINY)

    def test_unknown_name_lists_valid_names(self):
        with pytest.raises(UnknownModelError, match="unknown model 'flat_unet'; valid names: .*flat_unet2d.*unet3d"):
            create_model("flat_unet")


@pytest.mark.parametrize("name", sorted(TINY))
class TestEveryModel:
    def test_forward_shape(self, name):
        torch.manual_seed(0)
        model = create_model(name, in_channels=4, out_channels=3, **TINY[name]).eval()
        x = torch.randn(2, *tiny_shape(model.info.dims))
        assert model(x).shape == (2, 3, *x.shape[2:])

    def test_channels_are_parameters(self, name):
        model = create_model(name, in_channels=2, out_channels=5, **TINY[name]).eval()
        x = torch.randn(1, 2, *tiny_shape(model.info.dims)[1:])
        assert model(x).shape[1] == 5

    def test_info_rebuilds_the_same_architecture(self, name):
        model = create_model(name, **TINY[name])
        again = create_model(model.info.arch, **model.info.config)
        assert [p.shape for p in model.parameters()] == [p.shape for p in again.parameters()]
        assert model.info.dims in (2, 3) and model.info.divisible_by >= 2


class TestSizes:
    def test_flat_unet_is_much_smaller_than_unet(self):
        n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        assert n(create_model("unet2d", features=16, depth=4)) > 12 * n(create_model("flat_unet2d", features=16, depth=4))

    def test_mobilenet_default_is_about_310k(self):
        n = sum(p.numel() for p in create_model("mobilenetv3_lraspp").parameters())
        assert 280_000 < n < 340_000
        skip = sum(p.numel() for p in create_model("mobilenetv3_lraspp_skip").parameters())
        assert skip > n


class TestSwitchUnpool:
    def test_matches_max_unpool_with_ties(self):
        x = torch.relu(torch.randn(2, 3, 8, 12))
        x[:, :, :4] = 0                      # all-zero windows: ties everywhere
        pooled, idx = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
        m, mask = switch_pool(x)
        assert torch.equal(m, pooled)
        y = torch.randn_like(pooled)
        assert torch.equal(switch_unpool(y, mask), torch.nn.functional.max_unpool2d(y, idx, 2))

    def test_segnet_modes_agree(self):
        model = create_model("segnet", **TINY["segnet"]).eval()
        x = torch.relu(torch.randn(2, 4, 32, 32))
        with exportable_unpool("mask"):
            masked = model(x)
        assert torch.equal(masked, model(x))
