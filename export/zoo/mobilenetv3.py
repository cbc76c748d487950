"""MobileNetV3-Large encoder with an LR-ASPP segmentation head, written from the paper.

Howard et al., "Searching for MobileNetV3" (ICCV 2019): inverted residual blocks with
squeeze-and-excitation and hard-swish; the last stage dilated (output stride 16) for
segmentation; the Lite R-ASPP head combines the stride-16 features, gated by a global
average, with stride-8 features. ``width`` scales every layer (1.0 is the paper's network,
about 3M parameters); the default 0.3 gives about 318k parameters for 4 -> 3 channels.

The ``_skip`` variant adds classifier taps on the stride-4 and stride-2 features and sums
them in while upsampling (extra skip connections, about 1% more parameters).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ._registry import ModelInfo, register_model
from .blocks import ConvNormAct

#: kernel, expansion, out, squeeze-excite, hard-swish, stride (MobileNetV3-Large, Table 1)
LARGE = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of ``divisor`` without losing more than 10%."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class SqueezeExcite(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        squeeze = make_divisible(ch // 4)
        self.fc1 = nn.Conv2d(ch, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, ch, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise (kxk, maybe strided or dilated) -> SE -> project (1x1)."""

    def __init__(self, cin: int, kernel: int, exp: int, cout: int, se: bool, hs: bool,
                 stride: int, dilation: int = 1):
        super().__init__()
        act = nn.Hardswish if hs else nn.ReLU
        layers: list[nn.Module] = []
        if exp != cin:
            layers.append(ConvNormAct(2, cin, exp, 1, act=act))
        layers.append(ConvNormAct(2, exp, exp, kernel, stride, groups=exp, dilation=dilation, act=act))
        if se:
            layers.append(SqueezeExcite(exp))
        layers.append(ConvNormAct(2, exp, cout, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3Encoder(nn.Module):
    """Returns features at strides 2, 4, 8 and 16 (the last stage dilated, not strided)."""

    def __init__(self, in_channels: int, width: float):
        super().__init__()
        stem = make_divisible(16 * width)
        self.stem = ConvNormAct(2, in_channels, stem, 3, 2, act=nn.Hardswish)
        blocks, cin, stride, dilation, self.taps = [], stem, 2, 1, {}
        for k, exp, out, se, hs, s in LARGE:
            if s == 2 and stride == 16:      # keep output stride 16: dilate from here on
                s, dilation = 1, 2
            blocks.append(InvertedResidual(cin, k, make_divisible(exp * width), make_divisible(out * width),
                                           se, hs, s, dilation))
            stride *= s
            self.taps[stride] = len(blocks) - 1     # last block at each stride
            cin = blocks[-1].block[-1][0].out_channels
        self.blocks = nn.ModuleList(blocks)
        self.last = ConvNormAct(2, cin, make_divisible(960 * width), 1, act=nn.Hardswish)
        self.channels = {st: (blocks[i].block[-1][0].out_channels) for st, i in self.taps.items()}
        self.channels[16] = self.last[0].out_channels

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = self.stem(x)
        feats = {2: x}
        last_of = {i: st for st, i in self.taps.items()}
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in last_of and last_of[i] < 16:
                feats[last_of[i]] = x
        feats[16] = self.last(x)
        return feats


class LRASPP(nn.Module):
    """Lite R-ASPP: gated stride-16 features + stride-8 features, optional extra skips."""

    def __init__(self, ch: dict[int, int], out_channels: int, inter: int, skips: tuple[int, ...] = ()):
        super().__init__()
        self.cbr = ConvNormAct(2, ch[16], inter, 1)
        self.scale = nn.Conv2d(ch[16], inter, 1)
        self.high_classifier = nn.Conv2d(inter, out_channels, 1)
        self.low_classifier = nn.Conv2d(ch[8], out_channels, 1)
        self.skips = skips
        self.skip_classifiers = nn.ModuleDict({str(s): nn.Conv2d(ch[s], out_channels, 1) for s in skips})

    def forward(self, feats: dict[int, torch.Tensor]) -> tuple[torch.Tensor, int]:
        high = feats[16]
        gate = torch.sigmoid(self.scale(high.mean(dim=(2, 3), keepdim=True)))
        x = self.cbr(high) * gate
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        y = self.low_classifier(feats[8]) + self.high_classifier(x)
        stride = 8
        for s in sorted(self.skips, reverse=True):
            y = F.interpolate(y, scale_factor=stride // s, mode="bilinear", align_corners=False)
            y = y + self.skip_classifiers[str(s)](feats[s])
            stride = s
        return y, stride


class MobileNetV3LRASPP(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, width: float, inter: int | None,
                 skips: tuple[int, ...], arch: str, config: dict):
        super().__init__()
        self.encoder = MobileNetV3Encoder(in_channels, width)
        inter = inter or make_divisible(128 * width)
        self.head = LRASPP(self.encoder.channels, out_channels, inter, skips)
        self.info = ModelInfo(arch, 2, 16, (128, 128), True,
                              dict(config, in_channels=in_channels, out_channels=out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, stride = self.head(self.encoder(x))
        return F.interpolate(y, scale_factor=stride, mode="bilinear", align_corners=False)


@register_model
def mobilenetv3_lraspp(in_channels: int = 4, out_channels: int = 3, width: float = 0.3,
                       inter: int | None = None) -> MobileNetV3LRASPP:
    """MobileNetV3-Large + LR-ASPP (2D); ``width`` scales all layers."""
    return MobileNetV3LRASPP(in_channels, out_channels, width, inter, (), "mobilenetv3_lraspp",
                             dict(width=width, inter=inter))


@register_model
def mobilenetv3_lraspp_skip(in_channels: int = 4, out_channels: int = 3, width: float = 0.3,
                            inter: int | None = None) -> MobileNetV3LRASPP:
    """MobileNetV3-Large + LR-ASPP with extra skip connections from strides 4 and 2."""
    return MobileNetV3LRASPP(in_channels, out_channels, width, inter, (4, 2), "mobilenetv3_lraspp_skip",
                             dict(width=width, inter=inter))
