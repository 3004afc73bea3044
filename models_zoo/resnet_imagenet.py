"""ImageNet-style ResNet-18/50 (7x7 stride-2 stem + max pool, 4 stages), with a width multiplier."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models_zoo.common import conv_bn, scaled
from models_zoo.resnet_cifar import BasicBlock


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (strided) -> 1x1 expand (x4), plus a 1x1 conv-bn downsample shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, mid_channels: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = mid_channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, mid_channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_channels)
        self.conv2 = nn.Conv2d(mid_channels, mid_channels, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_channels)
        self.conv3 = nn.Conv2d(mid_channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = conv_bn(in_channels, out_channels, 1, stride, act=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_BLOCKS: dict[str, tuple[type[nn.Module], int]] = {
    "basic": (BasicBlock, 1),
    "bottleneck": (Bottleneck, Bottleneck.expansion),
}


class ResNet(nn.Module):
    """ImageNet ResNet; module names follow torchvision (conv1, bn1, layer1..4, fc).

    >>> ResNet(block="basic", layers=(1, 1, 1, 1), width=0.25)(torch.zeros(1, 3, 64, 64)).shape
    torch.Size([1, 10])
    """

    def __init__(
        self,
        block: str = "basic",
        layers: Sequence[int] = (2, 2, 2, 2),
        in_chans: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        widths: Sequence[int] = (64, 128, 256, 512),
        width: float = 1.0,
    ) -> None:
        """`image_size` is accepted for a uniform interface; the net works at any size >= 8."""
        super().__init__()
        if len(widths) != len(layers):
            raise ValueError(f"widths {tuple(widths)} and layers {tuple(layers)} differ in length")
        if block not in _BLOCKS:
            raise ValueError(f"unknown ResNet block {block!r}; available: {', '.join(_BLOCKS)}")
        block_cls, expansion = _BLOCKS[block]
        stem = scaled(widths[0], width)
        self.conv1 = nn.Conv2d(in_chans, stem, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        prev = stem
        for index, (mid, blocks) in enumerate(zip(widths, layers)):
            mid = scaled(mid, width)
            stride = 1 if index == 0 else 2
            stage = _stage(block_cls, expansion, prev, mid, blocks, stride)
            self.add_module(f"layer{index + 1}", stage)
            prev = mid * expansion
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(
    block_cls: type[nn.Module], expansion: int, in_channels: int, mid: int, blocks: int, stride: int
) -> nn.Sequential:
    first = block_cls(in_channels, mid, stride)
    rest = [block_cls(mid * expansion, mid) for _ in range(blocks - 1)]
    return nn.Sequential(first, *rest)
