"""LeNet-style CNN whose conv features are flattened (C x H x W) straight into a Linear."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models_zoo.common import scaled


class LeNet(nn.Module):
    """conv-relu-maxpool x2 -> flatten -> Linear -> ReLU -> Linear (a flatten->linear coupling).

    The first Linear's in_features is channels[-1] * (image_size // 4) ** 2, so the model is
    built for one image size. Padding keeps 8x8 inputs (scikit-learn digits) valid.

    >>> LeNet(in_chans=1, image_size=8)(torch.zeros(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 10,
        image_size: int = 32,
        channels: Sequence[int] = (6, 16),
        hidden: int = 120,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        c1, c2 = (scaled(c, width) for c in channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, c1, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        spatial = image_size // 4
        hidden_size = scaled(hidden, width)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(c2 * spatial * spatial, hidden_size)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(self.flatten(self.features(x)))))
