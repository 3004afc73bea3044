"""MobileNetV2: inverted residuals with depthwise 3x3 convs (groups == channels)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models_zoo.common import classifier_head, conv_bn, scaled

# (expand ratio t, output channels c, repeats n, first stride s), as in the paper's Table 2.
DEFAULT_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 2, 2),
    (6, 64, 2, 2),
)


class InvertedResidual(nn.Module):
    """1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 project; residual add if shapes match."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(conv_bn(in_channels, hidden, 1, act=nn.ReLU6))
        layers.append(conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6))
        layers.append(conv_bn(hidden, out_channels, 1, act=None))
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 with a stride-1 stem (small images); `width` scales every layer (multiple of 8).

    >>> MobileNetV2(width=0.5)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        settings: Sequence[tuple[int, int, int, int]] = DEFAULT_SETTINGS,
        stem_channels: int = 16,
        last_channels: int = 128,
        width: float = 1.0,
    ) -> None:
        """`image_size` is accepted for a uniform interface; the net works at any size >= 8."""
        super().__init__()
        prev = scaled(stem_channels, width, divisor=8)
        blocks: list[nn.Module] = [conv_bn(in_chans, prev, 3, act=nn.ReLU6)]
        for expand_ratio, channels, repeats, first_stride in settings:
            out = scaled(channels, width, divisor=8)
            for index in range(repeats):
                stride = first_stride if index == 0 else 1
                blocks.append(InvertedResidual(prev, out, stride, expand_ratio))
                prev = out
        last = scaled(last_channels, max(1.0, width), divisor=8)
        blocks.append(conv_bn(prev, last, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*blocks)
        self.classifier = classifier_head(last, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
