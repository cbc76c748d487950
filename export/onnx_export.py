"""PyTorch -> ONNX (single file, checked), and ONNX fp16 / int8 variants."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .errors import ConversionError

INPUT_NAME, OUTPUT_NAME = "image", "logits"


def _dynamic_shapes(info, dynamic_spatial: bool) -> tuple[dict, ...]:
    from torch.export import Dim

    axes = {0: Dim("batch", min=1, max=1024)}
    if dynamic_spatial and info.dynamic_spatial:
        step = info.divisible_by
        for ax, name in zip(range(2, 2 + info.dims), ("d", "h", "w")[-info.dims:]):
            axes[ax] = step * Dim(f"{name}_{step}", min=1, max=4096 // step)
    return (axes,)


def export_onnx(model: nn.Module, path: str | os.PathLike, sample_shape: Sequence[int],
                dynamic_spatial: bool = True, opset: int = 18) -> Path:
    """Export ``model`` to one self-contained ONNX file that passes ``onnx.checker``.

    Parameters
    ----------
    model : a zoo model (has ``info``); exported in eval mode
    path : output ``.onnx`` file
    sample_shape : ``(C, *spatial)`` of one item; spatial sizes divisible by ``info.divisible_by``
    dynamic_spatial : also make spatial axes dynamic (batch always is) when the model allows

    Raises
    ------
    ConversionError
        when the exporter cannot represent the model.
    """
    import onnx

    path = Path(path)
    model = model.eval()
    x = torch.randn(2, *sample_shape)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                if _holds_torchscript(model):
                    _export_scripted(model, x, raw, dynamic_spatial, opset)
                else:
                    torch.onnx.export(model, (x,), str(raw), dynamo=True, opset_version=opset,
                                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                      dynamic_shapes=_dynamic_shapes(model.info, dynamic_spatial))
        except Exception as exc:  # torch.onnx raises many exception types
            raise ConversionError(f"ONNX export of {model.info.arch} failed: {str(exc).splitlines()[0]}") from None
        proto = onnx.load(str(raw))       # pulls in the external .data file
    proto.producer_name = "edge-infer export"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ConversionError(f"exported ONNX of {model.info.arch} fails onnx.checker: {str(exc).splitlines()[0]}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path), save_as_external_data=False)
    return path


def _holds_torchscript(model: nn.Module) -> bool:
    """True when ``model`` is or wraps a TorchScript module (``torch.export`` cannot trace those)."""
    return any(isinstance(m, torch.jit.ScriptModule) for m in model.modules())


def _export_scripted(model: nn.Module, x: torch.Tensor, raw: Path, dynamic_spatial: bool, opset: int) -> None:
    """The TorchScript module inside ``model`` through the TorchScript-based exporter
    (``dynamo=False``), batch dynamic (and spatial axes, for a fully convolutional model)."""
    axes = {0: "batch"}
    if dynamic_spatial and model.info.dynamic_spatial:
        axes.update({ax: f"s{ax}" for ax in range(2, x.ndim)})
    scripted = next(m for m in model.modules() if isinstance(m, torch.jit.ScriptModule))
    torch.onnx.export(scripted, (x,), str(raw), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes})


def onnx_to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Convert weights and compute to float16, keeping float32 input and output.

    Uses onnxruntime's ``convert_float_to_float16`` with ``keep_io_types=True``: the device
    still feeds and receives float32, with a Cast at each end.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    proto = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, disable_shape_infer=False)
    toposort(proto.graph)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst), save_as_external_data=False)
    return Path(dst)


def toposort(graph) -> None:
    """Reorder ``graph.node`` in place so every node comes after the producers of its inputs.

    onnxruntime's float16 converter appends its input Casts at the end of the node list,
    which onnx.checker refuses.
    """
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(i in available for i in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise ConversionError(f"ONNX graph has a cycle or a dangling input at node {rest[0].name}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


class _Reader:
    """onnxruntime CalibrationDataReader over an iterable of float32 batches."""

    def __init__(self, batches: Iterable[np.ndarray], name: str):
        self._it = iter(batches)
        self._name = name

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {self._name: np.ascontiguousarray(x, dtype=np.float32)}


def onnx_to_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: Iterable[np.ndarray]) -> Path:
    """Static int8 quantization (QDQ, per-channel weights) calibrated on ``calibration`` batches.

    Input and output stay float32 (Quantize/Dequantize nodes at the edges). Activations are
    uint8: onnxruntime fuses every Conv, Concat and MaxPool of the U-Net into int8 kernels
    (with int8 activations the Concats and the Convs after them stayed float, between
    Transposes). Weights use 7 bits (``reduce_range``): x86 CPUs without VNNI multiply u8 by
    s8 with 16-bit saturating sums, which lost tumour voxels with 8-bit weights.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        name = onnx.load(str(pre), load_external_data=False).graph.input[0].name   # an imported graph names its own
        quantize_static(str(pre), str(dst), _Reader(calibration, name), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    proto = onnx.load(str(dst))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(dst), save_as_external_data=False)
    return Path(dst)
