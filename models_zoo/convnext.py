"""ConvNeXt: depthwise 7x7 conv, channels-last LayerNorm + MLP, layer scale, residual add."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models_zoo.common import scaled


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over channels of an (N, C, H, W) map: permute, F.layer_norm, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """dwconv 7x7 -> (N,H,W,C) -> LayerNorm -> Linear(C,4C) -> GELU -> Linear(4C,C) -> gamma * x,
    then back to (N,C,H,W) and added to the input.

    `gamma` is a raw nn.Parameter of shape (C,) (layer scale), tied to the block's channels.
    """

    def __init__(self, dim: int, mlp_ratio: int = 4, layer_scale_init: float = 1.0) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dwconv(x).permute(0, 2, 3, 1)
        out = self.pwconv2(self.act(self.pwconv1(self.norm(out))))
        out = (self.gamma * out).permute(0, 3, 1, 2)
        return x + out


class ConvNeXt(nn.Module):
    """ConvNeXt with a small patchify stem; stages joined by LayerNorm2d + 2x2 stride-2 conv.

    `layer_scale_init` defaults to 1.0 (the paper uses 1e-6) so every block visibly changes the
    output — which pruning-equivalence checks need.

    >>> ConvNeXt(dims=(8, 16), depths=(1, 1))(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        dims: Sequence[int] = (16, 32, 64),
        depths: Sequence[int] = (2, 2, 2),
        stem_patch: int = 2,
        layer_scale_init: float = 1.0,
        width: float = 1.0,
    ) -> None:
        """`image_size` is accepted for a uniform interface; the net works at any size >= 8."""
        super().__init__()
        if len(dims) != len(depths):
            raise ValueError(f"dims {tuple(dims)} and depths {tuple(depths)} differ in length")
        widths = [scaled(d, width) for d in dims]
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, widths[0], stem_patch, stride=stem_patch),
            LayerNorm2d(widths[0], eps=1e-6),
        )
        stages: list[nn.Module] = []
        for index, (dim, depth) in enumerate(zip(widths, depths)):
            blocks = [ConvNeXtBlock(dim, layer_scale_init=layer_scale_init) for _ in range(depth)]
            if index > 0:
                blocks.insert(0, _downsample(widths[index - 1], dim))
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(widths[-1], eps=1e-6)
        self.head = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.norm(x.mean(dim=(-2, -1))))


def _downsample(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        LayerNorm2d(in_channels, eps=1e-6), nn.Conv2d(in_channels, out_channels, 2, stride=2)
    )
