"""YOLOv8-style C2f net: chunk channels in two, chain bottlenecks on the last piece, cat all."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models_zoo.common import classifier_head, scaled


class Conv(nn.Module):
    """Conv (no bias) -> BatchNorm -> SiLU, as in Ultralytics."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1):
        super().__init__()
        padding = kernel_size // 2
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Two 3x3 Convs with a residual add (input and output channels are tied)."""

    def __init__(self, channels: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = Conv(channels, channels, 3)
        self.cv2 = Conv(channels, channels, 3)
        self.add = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.cv2(self.cv1(x))
        return x + out if self.add else out


class C2f(nn.Module):
    """cv1 -> chunk(2) -> n bottlenecks chained on the last chunk -> cat(all pieces) -> cv2."""

    def __init__(self, in_channels: int, out_channels: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        self.c = out_channels // 2
        self.cv1 = Conv(in_channels, 2 * self.c, 1)
        self.cv2 = Conv((2 + n) * self.c, out_channels, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class CSPNet(nn.Module):
    """Stem Conv, then per stage a stride-2 Conv and a C2f block; pool + Linear head.

    >>> CSPNet(channels=(8, 16), depth=1)(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        channels: Sequence[int] = (16, 32, 64),
        depth: int = 2,
        width: float = 1.0,
    ) -> None:
        """`image_size` is accepted for a uniform interface; the net works at any size >= 8."""
        super().__init__()
        widths = [scaled(c, width, divisor=2) for c in channels]
        layers: list[nn.Module] = [Conv(in_chans, widths[0], 3)]
        for prev, out in zip(widths, widths[1:]):
            layers += [Conv(prev, out, 3, stride=2), C2f(out, out, n=depth)]
        self.features = nn.Sequential(*layers)
        self.head = classifier_head(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
