"""Small building blocks shared by the zoo architectures."""

from __future__ import annotations

from torch import nn


def scaled(channels: int, width: float, divisor: int = 1) -> int:
    """Scale a channel count by a width multiplier, rounded to a multiple of `divisor` (>= divisor).

    >>> scaled(64, 0.5), scaled(16, 0.3, divisor=8)
    (32, 8)
    """
    value = max(divisor, int(channels * width + divisor / 2) // divisor * divisor)
    if value < 0.9 * channels * width:  # rounding down must not drop more than 10%
        value += divisor
    return value


def conv_bn(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Conv (no bias, 'same' padding for odd kernels) -> BatchNorm -> optional activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


def classifier_head(in_features: int, num_classes: int) -> nn.Sequential:
    """Global average pool -> flatten -> Linear: makes the net independent of image size."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(in_features, num_classes)
    )
