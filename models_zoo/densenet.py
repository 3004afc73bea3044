"""DenseNet-BC: every dense layer concatenates its new features onto the running map (dim 1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models_zoo.common import scaled


def _bn_relu_conv(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(in_channels),
        nn.ReLU(),
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
    )


class DenseLayer(nn.Module):
    """BN-ReLU-1x1 conv (bottleneck) -> BN-ReLU-3x3 conv (growth); output = cat([x, new], 1)."""

    def __init__(self, in_channels: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.bottleneck = _bn_relu_conv(in_channels, bn_size * growth_rate, 1)
        self.conv = _bn_relu_conv(bn_size * growth_rate, growth_rate, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.bottleneck(x))], 1)


class Transition(nn.Sequential):
    """BN-ReLU-1x1 conv (compress channels) -> 2x2 average pool."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.BatchNorm2d(in_channels),
            nn.ReLU(),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.AvgPool2d(2, ceil_mode=True),
        )


class DenseNet(nn.Module):
    """DenseNet-BC for small images: 3x3 stem, dense blocks with transitions, BN-ReLU-pool-Linear.

    >>> DenseNet(growth_rate=4, block_config=(1, 1))(torch.zeros(2, 3, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        growth_rate: int = 8,
        block_config: Sequence[int] = (2, 2, 2),
        init_features: int = 16,
        bn_size: int = 2,
        compression: float = 0.5,
        width: float = 1.0,
    ) -> None:
        """`width` scales growth rate and stem; `image_size` is accepted for a uniform interface."""
        super().__init__()
        growth = scaled(growth_rate, width)
        prev = scaled(init_features, width)
        layers: list[nn.Module] = [nn.Conv2d(in_chans, prev, 3, padding=1, bias=False)]
        for index, num_layers in enumerate(block_config):
            for _ in range(num_layers):
                layers.append(DenseLayer(prev, growth, bn_size))
                prev += growth
            if index < len(block_config) - 1:
                out = max(1, int(prev * compression))
                layers.append(Transition(prev, out))
                prev = out
        layers += [nn.BatchNorm2d(prev), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
