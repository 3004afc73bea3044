"""VGG with BatchNorm: a plain chain of conv-bn-relu blocks and max pools."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models_zoo.common import classifier_head, conv_bn, scaled

DEFAULT_CFG: tuple[int | str, ...] = (16, "M", 32, "M", 64, 64, "M")


class VGG(nn.Module):
    """VGG-BN: `cfg` lists conv widths, with "M" for a 2x2 max pool; adaptive pool + Linear head.

    >>> VGG(cfg=(8, "M", 16))(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        cfg: Sequence[int | str] = DEFAULT_CFG,
        width: float = 1.0,
    ) -> None:
        """`image_size` is accepted for a uniform interface; the net works at any size >= 8."""
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_chans
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                out = scaled(int(item), width)
                layers.append(conv_bn(prev, out, 3))
                prev = out
        self.features = nn.Sequential(*layers)
        self.head = classifier_head(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
