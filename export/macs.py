"""Count parameters and multiply-accumulates (MACs) with forward hooks on conv/linear layers."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def count_parameters(model: nn.Module, nonzero: bool = False) -> int:
    """All parameters, or only the nonzero ones (what unstructured pruning leaves)."""
    if nonzero:
        return int(sum(int(torch.count_nonzero(p)) for p in model.parameters()))
    return int(sum(p.numel() for p in model.parameters()))


def _layer_macs(module: nn.Module, inp: torch.Tensor, out: torch.Tensor, nonzero: bool) -> int:
    w = module.weight
    per_weight = int(torch.count_nonzero(w)) if nonzero else w.numel()
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        # every output position multiplies each weight once: out positions x weights per group
        positions = out[0, 0].numel()
        return positions * per_weight
    if isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
        return inp[0, 0].numel() * per_weight
    if isinstance(module, nn.Linear):
        return (out.numel() // out.shape[-1]) // out.shape[0] * per_weight
    return 0


@torch.no_grad()
def count_macs(model: nn.Module, input_shape: Sequence[int], nonzero: bool = False) -> int:
    """MACs of one forward pass on one item of ``input_shape`` ``(C, *spatial)``.

    Counts convolutions (incl. transposed) and linear layers: output positions times weights
    (grouped and depthwise convolutions count only their own weights). Batch norm,
    activations, pooling and resizing are not counted (they are cheap next to the
    convolutions). With ``nonzero`` only nonzero weights count: the work a sparse kernel
    would do, not what a dense runtime does.
    """
    counted = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
    total = [0]
    hooks = [m.register_forward_hook(lambda mod, i, o: total.__setitem__(0, total[0] + _layer_macs(mod, i[0], o, nonzero)))
             for m in model.modules() if isinstance(m, counted)]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, *input_shape, dtype=p.dtype, device=p.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total[0])


def onnx_macs(path, input_shape: Sequence[int]) -> int:
    """MACs of the Conv / ConvTranspose / Gemm / MatMul nodes of an ONNX graph for one input.

    The graph's input is pinned to ``input_shape`` (``(1, C, *spatial)``) and shapes are
    inferred, so the count describes the exported file itself, not the PyTorch module.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for d, n in zip(dims, input_shape):
        d.Clear()
        d.dim_value = int(n)
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    inits = {t.name: numpy_helper.to_array(t).shape for t in model.graph.initializer}
    total = 0
    for node in model.graph.node:
        if node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul") and len(node.input) > 1:
            w = inits.get(node.input[1])
            if w is None:
                continue
            if node.op_type == "Conv":
                out = shapes.get(node.output[0])
                if not out or 0 in out:
                    raise ValueError(f"cannot infer the output shape of {node.name}")
                total += int(np.prod(out[2:])) * int(np.prod(w))
            elif node.op_type == "ConvTranspose":
                total += int(np.prod(shapes[node.input[0]][2:])) * int(np.prod(w))
            else:
                out = shapes.get(node.output[0])
                total += int(np.prod(out[:-1])) * int(np.prod(w))
    return total
