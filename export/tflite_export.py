"""PyTorch -> TFLite with litert-torch, and fp16 / int8 variants with ai-edge-quantizer."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .errors import ConversionError


def export_tflite(model: nn.Module, path: str | os.PathLike, sample_shape: Sequence[int],
                  dynamic_batch: bool = True) -> Path:
    """Convert ``model`` to a float32 ``.tflite`` with a fixed spatial size ``sample_shape[1:]``.

    TFLite graphs here have static spatial sizes: litert-torch cannot lower the symbolic
    pooling sizes (``floordiv``), and XNNPACK fails to reshape a derived-dim graph. The batch
    axis is dynamic when ``dynamic_batch`` and the conversion allows it (else batch 1).
    SegNet is converted with its switch-mask unpooling (TFLite cannot run MaxUnpool).
    """
    import litert_torch
    from torch.export import Dim

    from .zoo import exportable_unpool

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    attempts = [((torch.randn(2, *sample_shape),), ({0: Dim("batch", min=1, max=1024)},))] if dynamic_batch else []
    attempts.append(((torch.randn(1, *sample_shape),), None))
    last = None
    for args, dyn in attempts:
        try:
            with exportable_unpool("mask"), contextlib.redirect_stdout(io.StringIO()), _quiet():
                edge = litert_torch.convert(model, args, dynamic_shapes=dyn)
            edge.export(str(path))
        except Exception as exc:  # litert-torch raises many exception types
            last = exc
            continue
        if dyn is None or _batch_is_dynamic(path, sample_shape):
            return path
        last = RuntimeError("the converted graph kept a fixed batch size")
    raise ConversionError(f"TFLite conversion of {model.info.arch} failed: {str(last).splitlines()[0]}")


def _batch_is_dynamic(path: Path, sample_shape: Sequence[int]) -> bool:
    """True when the converted model really runs a batch of 3 (some graphs pin the batch)."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        it = Interpreter(model_path=str(path), num_threads=1)
        d = it.get_input_details()[0]
        it.resize_tensor_input(d["index"], [3, *sample_shape], strict=False)
        it.allocate_tensors()
        it.set_tensor(d["index"], np.zeros((3, *sample_shape), np.float32))
        it.invoke()
        return it.get_tensor(it.get_output_details()[0]["index"]).shape[0] == 3
    except (ValueError, RuntimeError):
        return False


@contextlib.contextmanager
def _quiet():
    """Silence litert-torch's progress lines and absl logging during a conversion."""
    prev = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(prev)


def tflite_to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """fp16 weights (float casting), float32 compute and io: about half the file size.

    ai-edge-quantizer's weight-only recipe with the FLOAT_CASTING algorithm; XNNPACK computes
    in fp16 only on CPUs with fp16 arithmetic, otherwise it dequantizes weights once at load.
    """
    from ai_edge_quantizer import quantizer, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName
    from ai_edge_quantizer.qtyping import TFLOperationName

    rm = recipe_manager.RecipeManager()
    rm.add_weight_only_config(regex=".*", operation_name=TFLOperationName.ALL_SUPPORTED, num_bits=16,
                              algorithm_key=AlgorithmName.FLOAT_CASTING)
    q = quantizer.Quantizer(str(src), rm.get_quantization_recipe())
    with contextlib.redirect_stdout(io.StringIO()), _quiet():
        res = q.quantize()
    Path(dst).write_bytes(bytes(res.quantized_model))
    return Path(dst)


def tflite_has_fp16(path: str | os.PathLike) -> bool:
    """Whether a ``.tflite`` file holds any float16 tensor (ai-edge-quantizer's FLOAT_CASTING
    skips the operators it does not support, such as CONV_3D, and then casts nothing)."""
    from ai_edge_litert.interpreter import Interpreter

    return any(d["dtype"] == np.float16 for d in Interpreter(model_path=str(path)).get_tensor_details())


def tflite_to_int8(src: str | os.PathLike, dst: str | os.PathLike, calibration: Iterable[np.ndarray]) -> Path:
    """Static int8 weights and activations (ai-edge-quantizer ``static_wi8_ai8``).

    The graph's input and output tensors are int8 too; the runtime quantizes the input and
    dequantizes the output with their scales. ``calibration`` yields float32 batches shaped
    like the model input (batch 1 each). Activation ranges are the min/max over all batches:
    the quantizer's default keeps a moving average (factor 0.95) of each batch's min/max,
    so its ranges follow the first batches and clipped the tumour's activations (ET lost).
    """
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import calibrator, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    interp = Interpreter(model_path=str(src))
    sig = interp.get_signature_list()
    key = next(iter(sig))
    in_name = sig[key]["inputs"][0]
    shape = tuple(interp.get_input_details()[0]["shape"])
    data = [{in_name: np.ascontiguousarray(x[: shape[0]], dtype=np.float32)} for x in calibration]
    rcp = recipe.static_wi8_ai8()
    rm = recipe_manager.RecipeManager()
    rm.load_quantization_recipe(rcp)
    q = quantizer.Quantizer(str(src), rcp)
    with contextlib.redirect_stdout(io.StringIO()), _quiet():
        cal = calibrator.Calibrator(str(src), num_threads=1, qsv_update_func=qsv_utils.min_max_update)
        cal.calibrate({key: data}, rm)
        res = q.quantize(cal.get_model_qsvs())
    Path(dst).write_bytes(bytes(res.quantized_model))
    return Path(dst)
