"""A split of a channel dim into unequal pieces whose sizes a module attribute holds (`torch.split(v,
self.channel_splits, dim=1)`, timm CoaT's ConvRelPosEnc: head groups of 2, 3 and 3 heads, each with its own
depthwise conv) is an offset map: each piece is pruned on its own and the attribute is refreshed piece by
piece. Sizes written in the code stay blocked (test_rules.py: a literal split is FIXED_SIZE).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import structprune
from helpers import group_with, outputs, positions, reason_kinds
from structprune.ir.reasons import ReasonKind

SIDE, HEAD_DIM, HEAD_SPLITS = 4, 4, (2, 4)
HEADS = sum(HEAD_SPLITS)


class SplitConvs(nn.Module):
    """A stem whose channels are cut into unequal pieces, each through its own depthwise conv, then joined."""

    def __init__(self, sizes: tuple[int, ...] = (4, 6, 6), literal: bool = False, attribute: bool = True) -> None:
        super().__init__()
        self.channel_splits = list(sizes) if attribute else None
        self.literal = literal
        self.stem = nn.Conv2d(3, sum(sizes), 1)
        self.convs = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2, groups=c) for c, k in zip(sizes, (1, 3, 5)))
        self.head = nn.Conv2d(sum(sizes), 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = [4, 6, 6] if self.literal else self.channel_splits
        pieces = torch.split(torch.relu(self.stem(x)), sizes, dim=1)
        return self.head(torch.cat([conv(p) for conv, p in zip(self.convs, pieces)], dim=1))


class HeadGroupConvAttention(nn.Module):
    """Attention plus a convolutional term on the values: heads in groups of 2 and 4, each group through
    its own depthwise conv (CoaT's factorised attention with convolutional relative position encoding)."""

    def __init__(self) -> None:
        super().__init__()
        dim = HEADS * HEAD_DIM
        self.num_heads = HEADS
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.channel_splits = [h * HEAD_DIM for h in HEAD_SPLITS]
        self.convs = nn.ModuleList(nn.Conv2d(c, c, k, padding=k // 2, groups=c)
                                   for c, k in zip(self.channel_splits, (3, 5)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        image = v.transpose(-1, -2).reshape(b, -1, SIDE, SIDE)
        pieces = torch.split(image, self.channel_splits, dim=1)
        conv = torch.cat([c(p) for c, p in zip(self.convs, pieces)], dim=1)
        conv = conv.reshape(b, self.num_heads, -1, n).transpose(-1, -2)
        out = F.scaled_dot_product_attention(q, k, v) + q * conv
        return self.proj(out.transpose(1, 2).reshape(b, n, -1))


class PartialConvBlock(nn.Module):
    """timm FasterNet: a 3x3 conv over the first quarter of the channels only, the split sizes held as
    two int attributes (`[self.dim_conv3, self.dim_untouched]`), then a 1x1 MLP and a residual."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.dim_conv3 = dim // 4
        self.dim_untouched = dim - self.dim_conv3
        self.stem = nn.Conv2d(3, dim, 1)
        self.partial = nn.Conv2d(self.dim_conv3, self.dim_conv3, 3, padding=1, bias=False)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.ReLU(), nn.Conv2d(2 * dim, dim, 1))
        self.head = nn.Conv2d(dim, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x1, x2 = torch.split(x, [self.dim_conv3, self.dim_untouched], dim=1)
        return self.head(x + self.mlp(torch.cat((self.partial(x1), x2), 1)))


class DualPathBlock(nn.Module):
    """timm DPN: one projection cut by slices at an int attribute into a residual path (the first
    `num_1x1_c` channels, added) and a dense path (the rest, concatenated)."""

    def __init__(self, num_1x1_c: int = 8, inc: int = 3, literal: bool = False) -> None:
        super().__init__()
        self.num_1x1_c, self.literal = None if literal else num_1x1_c, literal
        self.stem = nn.Conv2d(3, num_1x1_c + inc, 1)
        self.proj = nn.Conv2d(num_1x1_c + inc, num_1x1_c + inc, 3, padding=1)
        self.head = nn.Conv2d(num_1x1_c + 2 * inc, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, cut = self.stem(x), 8 if self.literal else self.num_1x1_c
        out = self.proj(torch.relu(x))
        resid, dense = x[:, :cut] + out[:, :cut], torch.cat([x[:, cut:], out[:, cut:]], dim=1)
        return self.head(torch.cat([resid, dense], dim=1))


class AttentionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(5, HEADS * HEAD_DIM), HeadGroupConvAttention(), nn.Linear(
            HEADS * HEAD_DIM, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(self.embed(x)))


IMAGE = torch.randn(2, 3, 6, 6)
TOKENS = torch.randn(2, SIDE * SIDE, 5)


def _seeded(cls: type, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return cls(**kwargs).eval()


def test_each_piece_of_an_attribute_sized_split_is_a_group_of_its_own() -> None:
    graph = structprune.analyze(_seeded(SplitConvs), IMAGE)
    pieces = [group_with(graph, f"convs.{i}.weight:0") for i in range(3)]
    assert [(g.size, g.prunable) for g in pieces] == [(4, True), (6, True), (6, True)]
    assert positions(pieces[1], "stem.weight:0") == [-1] * 4 + list(range(6)) + [-1] * 6
    assert all(any("[4, 6, 6]" in a for a in g.assumptions) for g in pieces)  # verification confirms it


def test_pieces_prune_apart_and_the_split_sizes_follow_piece_by_piece() -> None:
    net = _seeded(SplitConvs)
    graph = structprune.analyze(net, IMAGE)
    first, second, third = (group_with(graph, f"convs.{i}.weight:0").id for i in range(3))
    plan = structprune.selection.Plan({first: (0, 3), second: (1, 2, 3, 4, 5), third: (2,)},
                                      {first: 4, second: 6, third: 6})
    result = structprune.compress(net, IMAGE, plan=plan, graph=graph)
    assert result.report.verification["ok"]
    assert result.model.channel_splits == [2, 5, 1] and result.model.stem.out_channels == 8
    assert [c.groups for c in result.model.convs] == [2, 5, 1]
    assert outputs(result.model, IMAGE).shape == (2, 2, 6, 6)


def test_sizes_written_in_the_code_keep_the_pieces_blocked() -> None:
    graph = structprune.analyze(_seeded(SplitConvs, literal=True, attribute=False), IMAGE)
    for i in range(3):
        group = group_with(graph, f"convs.{i}.weight:0")
        assert not group.prunable and reason_kinds(group) == {ReasonKind.FIXED_SIZE}


def test_an_attribute_equal_to_sizes_the_code_writes_itself_is_caught_by_verification() -> None:
    result = structprune.compress(_seeded(SplitConvs, literal=True), IMAGE, ratio=0.5)
    assert result.report.verification["ok"] and result.model.stem.out_channels == 16  # the pieces stay whole
    blocked = result.plan.meta["blocked_by_verification"]
    assert len(blocked) == 3 and all("split_with_sizes into [4, 6, 6]" in why for why in blocked.values())


def test_split_sizes_held_as_one_int_attribute_per_piece_follow_the_pruned_widths() -> None:
    graph = structprune.analyze(_seeded(PartialConvBlock), IMAGE)
    stem = [g for g in graph.groups if any(m.fqn == "stem.weight" and m.axis == 0 for m in g.members)]
    assert sorted((g.size, g.prunable) for g in stem) == [(4, True), (12, True)]  # one group per piece
    result = structprune.compress(_seeded(PartialConvBlock), IMAGE, ratio=0.5)
    pruned = result.model
    assert result.report.verification["ok"] and "blocked_by_verification" not in result.plan.meta
    assert (pruned.dim_conv3, pruned.dim_untouched) == (pruned.partial.out_channels, 6) == (2, 6)
    assert pruned.stem.out_channels == 8 and outputs(pruned, IMAGE).shape == (2, 2, 6, 6)


def test_slices_at_an_int_attribute_prune_each_side_and_the_attribute_follows() -> None:
    graph = structprune.analyze(_seeded(DualPathBlock), IMAGE)
    stem = [g for g in graph.groups if any(m.fqn == "stem.weight" and m.axis == 0 for m in g.members)]
    assert sorted((g.size, g.prunable) for g in stem) == [(3, True), (8, True)]  # the two paths
    result = structprune.compress(_seeded(DualPathBlock), IMAGE, ratio=0.5)
    pruned = result.model
    assert result.report.verification["ok"] and "blocked_by_verification" not in result.plan.meta
    assert (pruned.num_1x1_c, pruned.stem.out_channels, pruned.head.in_channels) == (4, 4 + 1, 4 + 2 * 1)
    assert outputs(pruned, IMAGE).shape == (2, 2, 6, 6)


def test_slices_at_a_literal_index_stay_blocked() -> None:
    graph = structprune.analyze(_seeded(DualPathBlock, literal=True), IMAGE)
    stem = [g for g in graph.groups if any(m.fqn == "stem.weight" and m.axis == 0 for m in g.members)]
    assert stem and all(not g.prunable and reason_kinds(g) == {ReasonKind.FIXED_SIZE} for g in stem)
    assert any("slice along a channel dim uses indices fixed in the code" in str(r) for g in stem for r in g.reasons)


def test_head_groups_of_unequal_size_lose_whole_heads_each() -> None:
    net = _seeded(AttentionNet)
    graph = structprune.analyze(net, TOKENS)
    groups = [group_with(graph, f"attn.convs.{i}.weight:0") for i in range(2)]
    assert [(g.size, g.prunable) for g in groups] == [(2, True), (4, True)]  # whole heads
    result = structprune.compress(net, TOKENS, ratio=0.5)
    attn = result.model.attn
    assert result.report.verification["ok"]
    assert attn.num_heads == 3 and attn.channel_splits == [HEAD_DIM, 2 * HEAD_DIM]
    assert attn.qkv.out_features == 3 * 3 * HEAD_DIM
    assert outputs(result.model, TOKENS).shape == (2, SIDE * SIDE, 3)
