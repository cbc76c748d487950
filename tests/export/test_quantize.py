"""int8 export: activation ranges cover every calibration batch (not a running average)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from export.zoo import create_model  # noqa: E402

from export_helpers import TINY, tiny_shape  # noqa: E402


def _batches():
    """Eight batches; the last holds values ten times larger than the others (a tumour seen
    late in calibration must not be clipped because earlier batches had none)."""
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((1, *tiny_shape(2))).astype(np.float32) for _ in range(8)]
    xs[-1] *= 10.0
    return xs


def _model():
    torch.manual_seed(0)
    return create_model("flat_unet2d", **TINY["flat_unet2d"]).eval()


def _covered(scale: float, zero_point: int, lo: int, hi: int, batches) -> bool:
    """The quantised range reaches every batch's extremes, within one step (the zero point
    is rounded to an integer); a running average would stop near the first batches' 4."""
    top, bottom = scale * (hi - zero_point), scale * (lo - zero_point)
    return top >= max(float(b.max()) for b in batches) - scale and bottom <= min(float(b.min()) for b in batches) + scale


class TestInt8Ranges:
    def test_onnx_input_range(self, tmp_path):
        import onnx
        from onnx import numpy_helper

        from export.onnx_export import export_onnx, onnx_to_int8

        fp32 = export_onnx(_model(), tmp_path / "m.onnx", tiny_shape(2))
        batches = _batches()
        graph = onnx.load(onnx_to_int8(fp32, tmp_path / "q.onnx", batches)).graph
        inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        q = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name)
        zp = inits[q.input[2]]
        info = np.iinfo(zp.dtype)
        assert _covered(float(inits[q.input[1]]), int(zp), info.min, info.max, batches)

    @pytest.mark.slow
    def test_tflite_input_range(self, tmp_path):
        from ai_edge_litert.interpreter import Interpreter

        from export.tflite_export import export_tflite, tflite_to_int8

        fp32 = export_tflite(_model(), tmp_path / "m.tflite", tiny_shape(2))
        batches = _batches()
        interp = Interpreter(model_path=str(tflite_to_int8(fp32, tmp_path / "q.tflite", batches)))
        d = interp.get_input_details()[0]
        (scale,), (zp,) = d["quantization_parameters"]["scales"], d["quantization_parameters"]["zero_points"]
        info = np.iinfo(d["dtype"])
        assert _covered(float(scale), int(zp), info.min, info.max, batches)
