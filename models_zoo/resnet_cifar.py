"""CIFAR-style ResNet (He et al. 2016, sec. 4.2): 3 stages of BasicBlocks, 1x1 conv shortcuts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models_zoo.common import classifier_head, conv_bn, scaled


class BasicBlock(nn.Module):
    """Two 3x3 conv-bn layers plus a shortcut (identity, or 1x1 conv-bn when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = conv_bn(in_channels, out_channels, 1, stride, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: 3x3 stem, 3 stages of n BasicBlocks, pool + Linear.

    >>> CifarResNet(depth=20)(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        depth: int = 20,
        in_chans: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        widths: Sequence[int] = (16, 32, 64),
        width: float = 1.0,
    ) -> None:
        """`image_size` is accepted for a uniform interface; the net works at any size >= 8."""
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        channels = [scaled(c, width) for c in widths]
        self.stem = conv_bn(in_chans, channels[0], 3)
        stages: list[nn.Module] = []
        prev = channels[0]
        for index, out in enumerate(channels):
            stride = 1 if index == 0 else 2
            stages.append(_stage(prev, out, blocks_per_stage, stride))
            prev = out
        self.stages = nn.Sequential(*stages)
        self.head = classifier_head(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def _stage(in_channels: int, out_channels: int, blocks: int, stride: int) -> nn.Sequential:
    first = BasicBlock(in_channels, out_channels, stride)
    rest = [BasicBlock(out_channels, out_channels) for _ in range(blocks - 1)]
    return nn.Sequential(first, *rest)
