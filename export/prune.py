"""Compression by pruning: one unstructured and three structured (channel-removing) methods.

- ``global``: global unstructured magnitude pruning. Zeroes the smallest weights of all
  convolutions together. The exported graph is as large and as slow as before (dense
  kernels still multiply the zeros); only a sparse format or compression of the file
  would gain. :func:`sparsity_report` says so with numbers.
- ``l1``: structured L1 filter pruning. Filters with the smallest L1 norm (relative to their
  layer's mean) are removed across the network; the channels physically disappear, so
  parameters, file size and MACs shrink.
- ``pair``: encoder-decoder pair pruning. The U-Net level (encoder block + decoder block
  joined by its skip connection) holding the most parameters loses its lowest-L1 filter in
  each of its four convolutions, repeatedly.
- ``random``: random filter pruning from the largest layers. The layer with the most
  parameters loses a random filter, repeatedly.

Structured methods need the model to describe its channel graph (``prunable_layers``,
``pruned``): the U-Net family does. Each method stops when the parameter count is at most
``(1 - amount)`` of the original.
"""

from __future__ import annotations

from enum import Enum
from typing import Callable

import numpy as np
import torch
from torch import nn

from .errors import PruningError
from .macs import count_parameters

MIN_CHANNELS = 2


class Method(str, Enum):
    GLOBAL = "global"
    L1 = "l1"
    PAIR = "pair"
    RANDOM = "random"


def _conv_weights(model: nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d))]


@torch.no_grad()
def global_magnitude(model: nn.Module, amount: float) -> dict[torch.Tensor, torch.Tensor]:
    """Zero the ``amount`` fraction of all convolution weights with the smallest magnitude.

    Returns masks (weight -> 0/1 tensor) to re-apply after each fine-tuning step.
    """
    weights = _conv_weights(model)
    flat = torch.cat([w.abs().flatten() for w in weights])
    k = int(amount * flat.numel())
    if k < 1:
        return {w: torch.ones_like(w) for w in weights}
    cut = flat.kthvalue(k).values
    masks = {}
    for w in weights:
        mask = (w.abs() > cut).to(w.dtype)
        w.mul_(mask)
        masks[w] = mask
    return masks


def apply_masks(masks: dict[torch.Tensor, torch.Tensor]) -> None:
    with torch.no_grad():
        for w, m in masks.items():
            w.mul_(m)


def sparsity_report(model: nn.Module) -> dict:
    """Parameters, nonzero parameters, and what that does and does not save."""
    total, nonzero = count_parameters(model), count_parameters(model, nonzero=True)
    return {"parameters": total, "nonzero_parameters": nonzero, "sparsity": 1 - nonzero / max(total, 1),
            "note": "dense ONNX/TFLite kernels still store and multiply the zeros: file size (uncompressed) "
                    "and MACs are unchanged; only a compressed download (zeros gzip well) or a sparse "
                    "runtime would gain"}


# -- structured -----------------------------------------------------------------------------
class _Plan:
    """Surviving channel indices per prunable layer, with a fast parameter count."""

    def __init__(self, model: nn.Module):
        if not hasattr(model, "prunable_layers") or not hasattr(model, "pruned"):
            raise PruningError(f"structured pruning supports the U-Net family (unet2d, unet3d, flat_unet2d, "
                               f"flat_unet3d), not {model.info.arch}; use --method global")
        self.model = model
        self.layers = model.prunable_layers()
        self.keep = {n: list(range(model.get_submodule(n)[0].out_channels)) for n in self.layers}
        self.kvol = {n: int(np.prod(model.get_submodule(n)[0].kernel_size)) for n in self.layers}
        self.fixed = count_parameters(model) - sum(self.layer_params(n, full=True) for n in self.layers)

    def _in_count(self, n: str, full: bool) -> int:
        if full:
            return self.model.get_submodule(n)[0].in_channels
        keep = {k: torch.tensor(v) for k, v in self.keep.items()}
        return len(self.model._inputs_of(n, keep))

    def layer_params(self, n: str, full: bool = False) -> int:
        out = self.model.get_submodule(n)[0].out_channels if full else len(self.keep[n])
        return self._in_count(n, full) * out * self.kvol[n] + 2 * out

    def params(self) -> int:
        head = self.model.head.weight
        head_in = len(self.keep["decoders.0.conv2"])
        full_head_in = head.shape[1]
        return self.fixed - (full_head_in - head_in) * head.shape[0] * int(np.prod(head.shape[2:])) \
            + sum(self.layer_params(n) for n in self.layers)

    def remove(self, n: str, channel: int) -> bool:
        if len(self.keep[n]) <= MIN_CHANNELS or channel not in self.keep[n]:
            return False
        self.keep[n].remove(channel)
        return True

    def build(self) -> nn.Module:
        return self.model.pruned({n: torch.tensor(v) for n, v in self.keep.items()})


def _l1(model: nn.Module, n: str) -> torch.Tensor:
    w = model.get_submodule(n)[0].weight.detach()
    return w.abs().flatten(1).sum(1)


def _structured(model: nn.Module, amount: float, step: Callable[[_Plan], bool]) -> nn.Module:
    if not 0 < amount < 1:
        raise PruningError(f"amount must be between 0 and 1 (fraction of parameters to remove), got {amount}")
    plan = _Plan(model)
    target = (1 - amount) * count_parameters(model)
    while plan.params() > target:
        if not step(plan):
            break          # every layer is at MIN_CHANNELS
    return plan.build()


def l1_filters(model: nn.Module, amount: float) -> nn.Module:
    """Structured L1 pruning: repeatedly drop the filter with the smallest relative L1 norm."""
    norms = {n: _l1(model, n) for n in model.prunable_layers()} if hasattr(model, "prunable_layers") else {}
    rel = {n: (v / v.mean().clamp_min(1e-12)).tolist() for n, v in norms.items()}

    def step(plan: _Plan) -> bool:
        best = min(((rel[n][c], n, c) for n in plan.layers if len(plan.keep[n]) > MIN_CHANNELS
                    for c in plan.keep[n]), default=None)
        return best is not None and plan.remove(best[1], best[2])

    return _structured(model, amount, step)


def pair_filters(model: nn.Module, amount: float) -> nn.Module:
    """Encoder-decoder pair pruning: the heaviest level loses its lowest-L1 filter in all four convs."""
    if not hasattr(model, "layer_pairs"):
        return _structured(model, amount, lambda plan: False)     # raises PruningError
    norms = {n: _l1(model, n).tolist() for n in model.prunable_layers()}
    pairs = model.layer_pairs()

    def step(plan: _Plan) -> bool:
        def weight(pair):
            return sum(plan.layer_params(f"{blk}.{c}") for blk in pair for c in ("conv1", "conv2"))
        for pair in sorted(pairs, key=weight, reverse=True):
            done = False
            for blk in pair:
                for c in ("conv1", "conv2"):
                    n = f"{blk}.{c}"
                    if len(plan.keep[n]) > MIN_CHANNELS:
                        done |= plan.remove(n, min(plan.keep[n], key=lambda i: norms[n][i]))
            if done:
                return True
        return False

    return _structured(model, amount, step)


def random_largest(model: nn.Module, amount: float, seed: int = 0) -> nn.Module:
    """Random filter pruning that always removes from the layer with the most parameters."""
    rng = np.random.default_rng(seed)

    def step(plan: _Plan) -> bool:
        layers = [n for n in plan.layers if len(plan.keep[n]) > MIN_CHANNELS]
        if not layers:
            return False
        n = max(layers, key=lambda k: (plan.layer_params(k), rng.random()))
        return plan.remove(n, int(rng.choice(plan.keep[n])))

    return _structured(model, amount, step)


def prune(model: nn.Module, method: str | Method, amount: float, seed: int = 0):
    """Apply ``method``; returns ``(model, masks)`` (masks only for ``global``, else None)."""
    try:
        method = Method(method)
    except ValueError:
        raise PruningError(f"unknown pruning method {method!r}; valid: {', '.join(m.value for m in Method)}") from None
    if method is Method.GLOBAL:
        if not 0 < amount < 1:
            raise PruningError(f"amount must be between 0 and 1, got {amount}")
        return model, global_magnitude(model, amount)
    fn = {Method.L1: l1_filters, Method.PAIR: pair_filters, Method.RANDOM: lambda m, a: random_largest(m, a, seed)}[method]
    return fn(model, amount), None
