"""`repeat_interleave` and `tile`: along a channel dim every id is repeated as the op repeats its
elements; along a data dim the ids are unchanged. And a parameter grid resampled over space keeps its
channel axis, as does one padded over its positions. Before they had rules, timm's GCViT (its global
query repeated over the batch: 32 groups), hieradet (a window position embedding tiled over space) and
grouped-query attention written with `repeat_interleave` (timm's Attention) were blocked; hieradet's
position embedding, interpolated bicubically, blocked its stage's channels as "over a channel dim"."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import structprune
from helpers import group_with


class GlobalQuery(nn.Module):
    """GCViT-style: a query computed once (batch 1) and repeated over the batch before it is used."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.query, self.head = nn.Linear(6, 16), nn.Parameter(torch.randn(1, 16)), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head(h * self.query.repeat_interleave(h.shape[0], dim=0))


class InterleavedChannels(nn.Module):
    """Each feature map channel used twice in a row by the next convolution."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv1(x)).repeat_interleave(2, dim=1)).mean((2, 3))


class PositionGrid(nn.Module):
    """hieradet-style: a position embedding parameter (1, C, 2, 2) brought to the feature map's size, by
    tiling (its window embedding) or bicubic interpolation (its global one), and added."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)
        self.pos = nn.Parameter(torch.randn(1, 8, 2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x)
        if self.how == "tile":
            pos = self.pos.tile((h.shape[2] // 2, h.shape[3] // 2))
        else:
            pos = nn.functional.interpolate(self.pos, size=h.shape[2:], mode="bicubic")
        return self.conv2(h + pos).mean((2, 3))


class PaddedPositions(nn.Module):
    """A position embedding (1, C, 3) padded by one position (a class token's slot) and added to
    token features (B, C, 4); BoTNet pads its per-head relative logits the same way."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Conv1d(3, 8, 1), nn.Conv1d(8, 2, 1)
        self.pos = nn.Parameter(torch.randn(1, 8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x) + nn.functional.pad(self.pos, (1, 0))).mean(2)


class ChannelPooling(nn.Module):
    """Max-pooling over the channel axis (maxout-like): the pooled channels cannot be pruned one by one."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.max_pool1d(self.fc1(x)[:, None], 2)[:, 0])


class Flattened(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x).repeat_interleave(2).reshape(x.shape[0], 16))


def _compress_and_check(model: nn.Module, x: torch.Tensor) -> nn.Module:
    result = structprune.compress(model.eval(), x, ratio=0.5)
    assert result.report.verification["ok"] and "blocked_by_verification" not in result.plan.meta
    return result.model


def test_repeat_over_the_batch_leaves_the_channels_prunable() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 6)
    group = group_with(structprune.analyze(GlobalQuery().eval(), x), "embed.weight:0")
    assert group.prunable and group.size == 16 and any(m.fqn == "query" for m in group.members)
    pruned = _compress_and_check(GlobalQuery(), x)
    assert pruned.embed.out_features == pruned.query.shape[1] == pruned.head.in_features == 8


def test_channels_repeated_in_place_lose_both_copies() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    group = group_with(structprune.analyze(InterleavedChannels().eval(), x), "conv1.weight:0")
    assert group.prunable and group.size == 8 and any(m.fqn == "conv2.weight" for m in group.members)
    model = InterleavedChannels()
    pruned = _compress_and_check(model, x)
    assert pruned.conv1.out_channels == 4 and pruned.conv2.in_channels == 8
    kept = [i for i in range(8) if any(torch.equal(model.conv1.weight[i], w) for w in pruned.conv1.weight)]
    want = torch.stack([model.conv2.weight[:, 2 * i + r] for i in kept for r in (0, 1)], 1)
    assert torch.equal(pruned.conv2.weight, want)


def test_repeat_interleave_without_a_dim_blocks_naming_why() -> None:
    group = group_with(structprune.analyze(Flattened().eval(), torch.randn(2, 4)), "fc1.weight:0")
    assert not group.prunable
    assert any("repeat_interleave" in str(r) and "no dim" in str(r) for r in group.reasons)


@pytest.mark.parametrize("how", ["tile", "interpolate"])
def test_a_parameter_grid_brought_to_the_feature_size_keeps_its_channel_axis_prunable(how: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    group = group_with(structprune.analyze(PositionGrid(how).eval(), x), "conv1.weight:0")
    assert group.prunable and group.size == 8 and any(m.fqn == "pos" and m.axis == 1 for m in group.members)
    pruned = _compress_and_check(PositionGrid(how), x)
    assert pruned.pos.shape == (1, 4, 2, 2) and pruned.conv1.out_channels == 4


def test_a_parameter_grid_padded_over_positions_keeps_its_channel_axis_prunable() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4)
    group = group_with(structprune.analyze(PaddedPositions().eval(), x), "embed.weight:0")
    assert group.prunable and group.size == 8 and any(m.fqn == "pos" and m.axis == 1 for m in group.members)
    pruned = _compress_and_check(PaddedPositions(), x)
    assert pruned.pos.shape == (1, 4, 3) and pruned.embed.out_channels == pruned.head.in_channels == 4


def test_pooling_over_the_only_channel_axis_still_blocks() -> None:
    group = group_with(structprune.analyze(ChannelPooling().eval(), torch.randn(2, 4)), "fc1.weight:0")
    assert not group.prunable and any("max_pool" in str(r) and "over a channel dim" in str(r) for r in group.reasons)
