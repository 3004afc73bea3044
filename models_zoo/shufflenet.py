"""ShuffleNetV2: channel split (chunk), concat, and a view/transpose/view channel shuffle."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models_zoo.common import classifier_head, conv_bn, scaled


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave `groups` channel groups: (B, g, C/g, H, W) -> transpose(1, 2) -> (B, C, H, W)."""
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width)
    return x.transpose(1, 2).contiguous().view(batch, channels, height, width)


def _branch(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """1x1 conv-bn-relu -> 3x3 depthwise conv-bn -> 1x1 conv-bn-relu."""
    return nn.Sequential(
        conv_bn(in_channels, out_channels, 1),
        conv_bn(out_channels, out_channels, 3, stride, groups=out_channels, act=None),
        conv_bn(out_channels, out_channels, 1),
    )


class ShuffleUnit(nn.Module):
    """Stride 1: split, transform one half, cat, shuffle. Stride 2: two branches, cat, shuffle."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if stride == 1 and in_channels != out_channels:
            raise ValueError(
                f"a stride-1 ShuffleUnit keeps its width; got {in_channels} -> {out_channels}"
            )
        half = out_channels // 2
        self.branch1: nn.Module | None = None
        if stride == 2:
            self.branch1 = nn.Sequential(
                conv_bn(in_channels, in_channels, 3, stride, groups=in_channels, act=None),
                conv_bn(in_channels, half, 1),
            )
        self.branch2 = _branch(in_channels if stride == 2 else half, half, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.branch1 is None:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 with a stride-1 stem (small images): stages start with a stride-2 unit.

    >>> ShuffleNetV2(stage_channels=(8, 16), stage_repeats=(2, 1))(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        stage_channels: Sequence[int] = (24, 48, 96),
        stage_repeats: Sequence[int] = (2, 2, 2),
        stem_channels: int = 16,
        last_channels: int = 128,
        width: float = 1.0,
    ) -> None:
        """`image_size` is accepted for a uniform interface; the net works at any size >= 8."""
        super().__init__()
        prev = scaled(stem_channels, width, divisor=2)
        units: list[nn.Module] = [conv_bn(in_chans, prev, 3)]
        for channels, repeats in zip(stage_channels, stage_repeats):
            out = scaled(channels, width, divisor=2)
            units.append(ShuffleUnit(prev, out, stride=2))
            units += [ShuffleUnit(out, out, stride=1) for _ in range(repeats - 1)]
            prev = out
        units.append(conv_bn(prev, last_channels, 1))
        self.features = nn.Sequential(*units)
        self.head = classifier_head(last_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
