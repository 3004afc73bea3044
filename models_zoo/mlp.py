"""MLP: a Linear/ReLU stack — the simplest Linear -> Linear coupling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Linear/ReLU stack over (B, in_features) vectors.

    >>> MLP(in_features=64, hidden=(32,), num_classes=3)(torch.zeros(2, 64)).shape
    torch.Size([2, 3])
    """

    def __init__(
        self, in_features: int = 64, hidden: Sequence[int] = (128, 64), num_classes: int = 10
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_features
        for size in hidden:
            layers += [nn.Linear(prev, size), nn.ReLU()]
            prev = size
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
