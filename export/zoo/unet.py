"""U-Net (channels doubling per level) and Flat U-Net (equal filters at every level), 2D and 3D.

Every convolution's width is explicit (``enc`` and ``dec`` lists of ``(mid, out)`` pairs), so
structured pruning can rebuild a thinner network with :meth:`UNet.pruned`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ._registry import ModelInfo, register_model
from .blocks import DoubleConv, Upsample, conv_cls, pool_cls

Pair = tuple[int, int]


class UNet(nn.Module):
    """An encoder-decoder with skip connections, max-pool down, nearest upsample up.

    Parameters
    ----------
    dims : 2 or 3
    in_channels, out_channels : input modalities and output logits
    enc : ``depth + 1`` pairs ``(mid, out)``, top level first; the last one is the bottleneck
    dec : ``depth`` pairs ``(mid, out)``, top level first
    arch, config : registry name and constructor arguments (kept in ``info``)
    """

    def __init__(self, dims: int, in_channels: int, out_channels: int, enc: Sequence[Pair],
                 dec: Sequence[Pair], arch: str = "unet", config: dict | None = None,
                 tile: tuple[int, ...] | None = None):
        super().__init__()
        enc, dec = [tuple(map(int, p)) for p in enc], [tuple(map(int, p)) for p in dec]
        if len(enc) != len(dec) + 1 or not dec:
            raise ValueError(f"a U-Net needs depth + 1 encoder blocks and depth >= 1 decoder blocks, got {len(enc)} and {len(dec)}")
        self.dims, self.in_channels, self.out_channels = dims, in_channels, out_channels
        self.enc_widths, self.dec_widths = enc, dec
        depth = len(dec)
        self.encoders = nn.ModuleList()
        cin = in_channels
        for mid, out in enc:
            self.encoders.append(DoubleConv(dims, cin, mid, out))
            cin = out
        self.decoders = nn.ModuleList()
        for i in range(depth):
            below = enc[depth][1] if i == depth - 1 else dec[i + 1][1]
            self.decoders.append(DoubleConv(dims, below + enc[i][1], *dec[i]))
        self.pool = pool_cls(dims)(2)
        self.up = Upsample(2)
        self.head = conv_cls(dims)(dec[0][1], out_channels, 1)
        cfg = dict(config or {}, in_channels=in_channels, out_channels=out_channels)
        cfg.setdefault("enc", [list(p) for p in enc])
        cfg.setdefault("dec", [list(p) for p in dec])
        default = tile or ((128, 128) if dims == 2 else (64, 64, 64))
        self.info = ModelInfo(arch, dims, 2 ** depth, default, True, cfg)

    @property
    def depth(self) -> int:
        return len(self.dec_widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.encoders[:-1]:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.encoders[-1](x)
        for i in reversed(range(self.depth)):
            x = self.decoders[i](torch.cat([self.up(x), skips[i]], dim=1))
        return self.head(x)

    # -- structured pruning support -----------------------------------------------------
    def prunable_layers(self) -> list[str]:
        """Names of the ConvNormAct layers whose output channels may be removed."""
        names = []
        for part, n in (("encoders", len(self.encoders)), ("decoders", len(self.decoders))):
            for i in range(n):
                names += [f"{part}.{i}.conv1", f"{part}.{i}.conv2"]
        return names

    def layer_pairs(self) -> list[tuple[str, str]]:
        """(encoder block, decoder block) name pairs at the same level, for pair pruning."""
        return [(f"encoders.{i}", f"decoders.{i}") for i in range(self.depth)]

    def _inputs_of(self, name: str, keep: dict[str, torch.Tensor]) -> torch.Tensor:
        """Indices of the input channels of layer ``name`` that survive ``keep``."""
        part, i, conv = name.split(".")
        i = int(i)
        if conv == "conv2":
            return keep[f"{part}.{i}.conv1"]
        if part == "encoders":
            return torch.arange(self.in_channels) if i == 0 else keep[f"encoders.{i - 1}.conv2"]
        below = f"encoders.{self.depth}.conv2" if i == self.depth - 1 else f"decoders.{i + 1}.conv2"
        offset = self.get_submodule(below)[0].out_channels
        return torch.cat([keep[below], offset + keep[f"encoders.{i}.conv2"]])

    @torch.no_grad()
    def pruned(self, keep: dict[str, torch.Tensor]) -> "UNet":
        """A new, thinner U-Net keeping output channels ``keep[name]`` of each prunable layer.

        Layers missing from ``keep`` keep all their channels. Weights, batch-norm statistics
        and the head are copied for the surviving channels.
        """
        full = {n: torch.arange(self.get_submodule(n)[0].out_channels) for n in self.prunable_layers()}
        keep = {**full, **{k: torch.as_tensor(v, dtype=torch.long).sort().values for k, v in keep.items()}}
        for n, idx in keep.items():
            if n not in full:
                raise KeyError(f"{n!r} is not a prunable layer of this U-Net")
            if len(idx) == 0:
                raise ValueError(f"pruning would remove every channel of {n}")
        width = lambda n: len(keep[n])  # noqa: E731
        enc = [(width(f"encoders.{i}.conv1"), width(f"encoders.{i}.conv2")) for i in range(len(self.encoders))]
        dec = [(width(f"decoders.{i}.conv1"), width(f"decoders.{i}.conv2")) for i in range(self.depth)]
        cfg = {k: v for k, v in self.info.config.items() if k not in ("enc", "dec")}
        new = UNet(self.dims, self.in_channels, self.out_channels, enc, dec, self.info.arch, cfg,
                   self.info.default_tile)
        for n in self.prunable_layers():
            src, dst = self.get_submodule(n), new.get_submodule(n)
            o, i = keep[n], self._inputs_of(n, keep)
            dst[0].weight.copy_(src[0].weight[o][:, i])
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(dst[1], attr).copy_(getattr(src[1], attr)[o])
        new.head.weight.copy_(self.head.weight[:, keep["decoders.0.conv2"]])
        new.head.bias.copy_(self.head.bias)
        new.train(self.training)
        return new


def _unet(dims: int, arch: str, in_channels: int, out_channels: int, widths: list[int],
          enc: Sequence[Pair] | None = None, dec: Sequence[Pair] | None = None, **config) -> UNet:
    """Build from per-level ``widths``, or from explicit ``enc``/``dec`` (a pruned network)."""
    depth = len(widths) - 1
    if enc is None or dec is None:
        enc = [(w, w) for w in widths]
        dec = [(widths[i], widths[i]) for i in range(depth)]
    return UNet(dims, in_channels, out_channels, enc, dec, arch, config)


def _check(features: int, depth: int) -> None:
    if features < 1 or depth < 1:
        raise ValueError(f"features and depth must be positive, got features={features}, depth={depth}")


@register_model
def unet2d(in_channels: int = 4, out_channels: int = 3, features: int = 16, depth: int = 4,
           enc: Sequence[Pair] | None = None, dec: Sequence[Pair] | None = None) -> UNet:
    """2D U-Net: ``features * 2**level`` filters per level (the classic doubling)."""
    _check(features, depth)
    return _unet(2, "unet2d", in_channels, out_channels, [features * 2 ** i for i in range(depth + 1)],
                 features=features, depth=depth, enc=enc, dec=dec)


@register_model
def unet3d(in_channels: int = 4, out_channels: int = 3, features: int = 8, depth: int = 3,
           enc: Sequence[Pair] | None = None, dec: Sequence[Pair] | None = None) -> UNet:
    """3D U-Net: ``features * 2**level`` filters per level."""
    _check(features, depth)
    return _unet(3, "unet3d", in_channels, out_channels, [features * 2 ** i for i in range(depth + 1)],
                 features=features, depth=depth, enc=enc, dec=dec)


@register_model
def flat_unet2d(in_channels: int = 4, out_channels: int = 3, features: int = 16, depth: int = 4,
                enc: Sequence[Pair] | None = None, dec: Sequence[Pair] | None = None) -> UNet:
    """2D Flat U-Net: the same ``features`` filters at every level."""
    _check(features, depth)
    return _unet(2, "flat_unet2d", in_channels, out_channels, [features] * (depth + 1),
                 features=features, depth=depth, enc=enc, dec=dec)


@register_model
def flat_unet3d(in_channels: int = 4, out_channels: int = 3, features: int = 8, depth: int = 3,
                enc: Sequence[Pair] | None = None, dec: Sequence[Pair] | None = None) -> UNet:
    """3D Flat U-Net: the same ``features`` filters at every level."""
    _check(features, depth)
    return _unet(3, "flat_unet3d", in_channels, out_channels, [features] * (depth + 1),
                 features=features, depth=depth, enc=enc, dec=dec)
