"""SegNet: a VGG16-style encoder whose max-pool switches drive the decoder's unpooling.

Badrinarayanan et al., "SegNet" (TPAMI 2017). ``width`` 64 is VGG16's layout (64, 128, 256,
512, 512 filters; about 29M parameters); the default 16 keeps it CPU-trainable.

Unpooling comes in two forms giving the same numbers:

- ``"indices"``: ``max_pool2d(return_indices=True)`` + ``max_unpool2d`` (ONNX MaxUnpool);
- ``"mask"``: a switch mask marking the first maximum of each 2x2 window, kept from the
  encoder, times the nearest-upsampled decoder features. Built from strided slices,
  comparisons, upsampling and products only, so TFLite runs it (its MaxUnpool path fails at
  ``BROADCAST_TO``). :func:`exportable_unpool` selects it while exporting.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from ._registry import ModelInfo, register_model
from .blocks import ConvNormAct

#: convolutions per VGG16 stage
VGG16_STAGES = (2, 2, 3, 3, 3)
VGG16_MULT = (1, 2, 4, 8, 8)

_UNPOOL_MODE = ["indices"]


@contextlib.contextmanager
def exportable_unpool(mode: str = "mask") -> Iterator[None]:
    """Within this context SegNet unpools with ``mode`` (``"mask"``: TFLite-safe ops)."""
    if mode not in ("indices", "mask"):
        raise ValueError(f"unpool mode must be 'indices' or 'mask', got {mode!r}")
    prev = _UNPOOL_MODE[0]
    _UNPOOL_MODE[0] = mode
    try:
        yield
    finally:
        _UNPOOL_MODE[0] = prev


def _quadrants(x: torch.Tensor) -> list[torch.Tensor]:
    """The four positions of every 2x2 window, in PyTorch's scan order (row-major).

    Picked with stride-2 depthwise convolutions whose kernels are one-hot (exact: one product
    by 1, three by 0): unlike strided slices, these keep a dynamic batch through TFLite
    conversion.
    """
    c = x.shape[1]
    out = []
    for k in range(4):
        w = torch.zeros(c, 1, 2, 2, dtype=x.dtype, device=x.device)
        w[:, 0, k // 2, k % 2] = 1
        out.append(F.conv2d(x, w, stride=2, groups=c))
    return out


def _parity(n: int, like: torch.Tensor) -> torch.Tensor:
    """0/1 parity of each index along an axis of length ``n`` (Range + Mod, no reshape)."""
    return torch.remainder(torch.arange(n, device=like.device), 2).to(like.dtype)


def switch_pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 max pooling that also returns a full-resolution one-hot switch mask.

    Equivalent to ``max_pool2d(x, 2, return_indices=True)``: PyTorch keeps the first maximum
    of each window in row-major order, and so does the mask (ties included). Only strided
    slices, comparisons, nearest upsampling and products: no reshapes, so a dynamic batch
    converts to TFLite.
    """
    q = _quadrants(x)
    m = torch.maximum(torch.maximum(q[0], q[1]), torch.maximum(q[2], q[3]))
    rows = _parity(x.shape[2], x)[:, None]
    cols = _parity(x.shape[3], x)[None, :]
    patterns = [(1 - rows) * (1 - cols), (1 - rows) * cols, rows * (1 - cols), rows * cols]
    taken = mask = None                 # no zeros_like: a converter may freeze its batch size
    for part, pattern in zip(q, patterns):
        eq = (part == m).to(x.dtype)
        hit = eq if taken is None else eq * (1 - taken)
        taken = hit if taken is None else taken + hit
        placed = F.interpolate(hit, scale_factor=2, mode="nearest") * pattern
        mask = placed if mask is None else mask + placed
    return m, mask


def switch_unpool(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Place ``y`` where the switch mask says, zeros elsewhere (``max_unpool2d`` equivalent)."""
    return F.interpolate(y, scale_factor=2, mode="nearest") * mask


class SegNet(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, width: int, stages: int, config: dict):
        super().__init__()
        if not 1 <= stages <= len(VGG16_STAGES) or width < 1:
            raise ValueError(f"segnet needs 1..{len(VGG16_STAGES)} stages and width >= 1, got {stages}, {width}")
        chans = [width * m for m in VGG16_MULT[:stages]]
        self.enc = nn.ModuleList()
        cin = in_channels
        for n, ch in zip(VGG16_STAGES, chans):
            self.enc.append(nn.Sequential(*[ConvNormAct(2, cin if j == 0 else ch, ch) for j in range(n)]))
            cin = ch
        self.dec = nn.ModuleList()
        for s in reversed(range(stages)):
            n, ch = VGG16_STAGES[s], chans[s]
            nxt = chans[s - 1] if s > 0 else chans[0]
            layers = [ConvNormAct(2, ch, ch) for _ in range(n - 1)] + [ConvNormAct(2, ch, nxt)]
            self.dec.append(nn.Sequential(*layers))
        self.head = nn.Conv2d(chans[0], out_channels, 3, padding=1)
        self.info = ModelInfo("segnet", 2, 2 ** stages, (128, 128), True,
                              dict(config, in_channels=in_channels, out_channels=out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mode = _UNPOOL_MODE[0]
        switches = []
        for blk in self.enc:
            x = blk(x)
            if mode == "indices":
                x, idx = F.max_pool2d(x, 2, return_indices=True)
            else:
                x, idx = switch_pool(x)
            switches.append(idx)
        for blk, idx in zip(self.dec, reversed(switches)):
            x = F.max_unpool2d(x, idx, 2) if mode == "indices" else switch_unpool(x, idx)
            x = blk(x)
        return self.head(x)


@register_model
def segnet(in_channels: int = 4, out_channels: int = 3, width: int = 16, stages: int = 5) -> SegNet:
    """SegNet with a VGG16-style encoder (``width`` 64 = VGG16) and max-unpool decoder."""
    return SegNet(in_channels, out_channels, width, stages, dict(width=width, stages=stages))
