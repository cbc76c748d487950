"""Pruning: every method shrinks the counted parameters; structured ones shrink the exported graph."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from export.errors import PruningError  # noqa: E402
from export.macs import count_macs, count_parameters, onnx_macs  # noqa: E402
from export.onnx_export import export_onnx  # noqa: E402
from export.prune import Method, prune, sparsity_report  # noqa: E402
from export.zoo import create_model  # noqa: E402

SHAPE = (4, 32, 32)


def _model():
    torch.manual_seed(0)
    return create_model("flat_unet2d", features=8, depth=2).eval()


@pytest.mark.parametrize("method", [m.value for m in Method])
def test_reduces_counted_parameters(method):
    model = _model()
    before = count_parameters(model)
    pruned, masks = prune(model, method, 0.6)
    after = count_parameters(pruned, nonzero=True)
    assert after <= 0.45 * before
    assert pruned(torch.randn(1, *SHAPE)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("method", ["l1", "pair", "random"])
def test_structured_shrinks_exported_graph(tmp_path, method):
    model = _model()
    full = export_onnx(model, tmp_path / "full.onnx", SHAPE)
    pruned, _ = prune(model, method, 0.6)
    small = export_onnx(pruned, tmp_path / "small.onnx", SHAPE)
    assert onnx_macs(small, (1, *SHAPE)) < 0.7 * onnx_macs(full, (1, *SHAPE))
    assert onnx_macs(small, (1, *SHAPE)) == count_macs(pruned, SHAPE)
    assert small.stat().st_size < full.stat().st_size


def test_global_keeps_graph_size_and_says_so():
    model = _model()
    macs = count_macs(model, SHAPE)
    pruned, masks = prune(model, "global", 0.8)
    report = sparsity_report(pruned)
    assert report["sparsity"] > 0.7 and "dense" in report["note"]
    assert count_macs(pruned, SHAPE) == macs
    assert count_macs(pruned, SHAPE, nonzero=True) < 0.4 * macs


def test_pruned_keeps_surviving_channels_exactly():
    model = _model()
    keep = {n: torch.arange(model.get_submodule(n)[0].out_channels) for n in model.prunable_layers()}
    x = torch.randn(2, *SHAPE)
    assert torch.allclose(model.pruned(keep)(x), model(x))


def test_structured_refuses_other_architectures():
    with pytest.raises(PruningError, match="U-Net family"):
        prune(create_model("segnet", width=4, stages=3), "l1", 0.5)


def test_unknown_method():
    with pytest.raises(PruningError, match="valid: global, l1, pair, random"):
        prune(_model(), "stamp", 0.5)
