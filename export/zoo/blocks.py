"""Layers shared by the architectures, for 2D and 3D alike."""

from __future__ import annotations

import torch
from torch import nn


def conv_cls(dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[dims]


def norm_cls(dims: int) -> type[nn.Module]:
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]


def pool_cls(dims: int) -> type[nn.Module]:
    return {2: nn.MaxPool2d, 3: nn.MaxPool3d}[dims]


class ConvNormAct(nn.Sequential):
    """Convolution (no bias) -> batch norm -> activation."""

    def __init__(self, dims: int, cin: int, cout: int, kernel: int = 3, stride: int = 1,
                 groups: int = 1, dilation: int = 1, act: type[nn.Module] | None = nn.ReLU):
        pad = dilation * (kernel - 1) // 2
        layers = [conv_cls(dims)(cin, cout, kernel, stride, pad, dilation=dilation, groups=groups, bias=False),
                  norm_cls(dims)(cout)]
        if act is not None:
            layers.append(act(inplace=True) if act in (nn.ReLU, nn.Hardswish) else act())
        super().__init__(*layers)


class DoubleConv(nn.Module):
    """Two 3x3 ConvNormAct layers: ``cin -> mid -> cout`` (the U-Net block)."""

    def __init__(self, dims: int, cin: int, mid: int, cout: int):
        super().__init__()
        self.conv1 = ConvNormAct(dims, cin, mid)
        self.conv2 = ConvNormAct(dims, mid, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class Upsample(nn.Module):
    """Nearest-neighbour upsampling by an integer factor (Resize in ONNX and TFLite)."""

    def __init__(self, factor: int = 2, mode: str = "nearest"):
        super().__init__()
        self.factor, self.mode = factor, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "nearest":
            return nn.functional.interpolate(x, scale_factor=self.factor, mode="nearest")
        return nn.functional.interpolate(x, scale_factor=self.factor, mode=self.mode, align_corners=False)
