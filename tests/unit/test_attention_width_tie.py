"""Attention that takes its width from the input (`B, N, C = x.shape`, heads reshaped with
`C // self.num_heads`, output reshaped to `(B, N, C)`) needs heads x head_dim to equal the input
width. Verification finds the mismatch; compress then ties that class's q/k/v rows to its input
width and analyses again, so every ratio and both attention modes verify and prune the residual."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import structprune
from structprune.api import TIES_KEY, class_name


class InputWidthAttention(nn.Module):
    """timm's older Attention (and Swin's, CaiT's, CoaT's): widths come from the input."""

    def __init__(self, dim: int, heads: int, positions: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.randn(2 * positions - 1, heads) * 0.1)
        index = torch.arange(positions)[:, None] - torch.arange(positions)[None, :] + positions - 1
        self.register_buffer("bias_index", index.flatten(), persistent=False)
        self.register_buffer("window_mask", torch.zeros(positions, positions), persistent=False)  # Swin's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = self.bias_table[self.bias_index].view(N, N, -1).permute(2, 0, 1)
        mask = x.new_zeros((N, N))  # a literal-size tensor built from the input: reads no channel
        scores = (q @ k.transpose(-2, -1)) * (C // self.num_heads) ** -0.5
        attn = (scores + bias + mask + self.window_mask).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, positions: int) -> None:
        super().__init__()
        self.norm, self.attn = nn.LayerNorm(dim), InputWidthAttention(dim, heads, positions)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm(x))
        return x + self.mlp(x)


class TinyViT(nn.Module):
    def __init__(self, dim: int = 24, heads: int = 4, positions: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.blocks = nn.Sequential(Block(dim, heads, positions), Block(dim, heads, positions))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.embed(x)).mean(1))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return TinyViT().eval()


@pytest.mark.parametrize("attention", ["heads", "head_dims"])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_input_width_attention_verifies_at_every_ratio_with_the_residual_pruned(ratio: float, attention: str) -> None:
    x = torch.randn(2, 5, 6)
    result = structprune.compress(_model(), x, ratio=ratio, attention=attention)
    assert result.report.verification["ok"]
    # per-head dims may happen to keep heads x head_dim equal to the width (0.5, 0.7): no tie needed then
    if attention == "heads" or ratio == 0.3:
        assert result.plan.meta[TIES_KEY] == [class_name(InputWidthAttention)]
    assert "blocked_by_verification" not in result.plan.meta
    attn = result.model.blocks[0].attn
    width = result.model.embed.out_features
    assert width < 24 and attn.qkv.out_features == 3 * width and attn.proj.in_features == width
    assert width % attn.num_heads == 0 and attn.bias_table.shape[1] == attn.num_heads
    assert (attn.num_heads == 4) == (attention == "head_dims")  # head_dims keeps the heads
    assert result.model(torch.randn(3, 5, 6)).shape == (3, 3)


def test_a_plan_with_tied_widths_applies_again_from_json() -> None:
    x = torch.randn(2, 5, 6)
    result = structprune.compress(_model(), x, ratio=0.5)
    replayed = structprune.apply_plan(_model(), x, structprune.Plan.from_json(result.plan.to_json()))
    assert replayed.embed.out_features == result.model.embed.out_features
    torch.testing.assert_close(replayed(x), result.model(x))


def test_strict_still_ties_widths_since_nothing_is_kept_whole() -> None:
    result = structprune.compress(_model(), torch.randn(2, 5, 6), ratio=0.5, strict=True)
    assert result.report.verification["ok"] and result.plan.meta[TIES_KEY]


def test_a_bias_table_indexed_by_positions_keeps_its_heads_axis_prunable() -> None:
    torch.manual_seed(0)
    attn = InputWidthAttention(8, 4, 3).eval()
    graph = structprune.analyze(attn, torch.randn(1, 3, 8))
    heads = [g for g in graph.groups if any(m.ref == "bias_table:1" for m in g.members)]
    assert len(heads) == 1 and heads[0].prunable and heads[0].size == 4
    assert not any("new_zeros" in str(r) for g in graph.groups for r in g.reasons)
    # a buffer over token positions, added to the logits, has no channel to lose
    assert not [g.id for g in graph.prunable if g.size > 1 and "window_mask" in str(g.member_fqns())]


class SpatialReductionAttention(nn.Module):
    """PVT v2: keys and values come from the input shrunk by a strided conv whose output is reshaped
    with the input's width (`reshape(B, C, -1)`), through a k|v projection."""

    def __init__(self, dim: int = 16, heads: int = 2, side: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.side = heads, dim // heads, side
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.sr, self.norm = nn.Conv2d(dim, dim, 2, stride=2), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        x = x.permute(0, 2, 1).reshape(B, C, self.side, self.side)
        x = self.norm(self.sr(x).reshape(B, C, -1).permute(0, 2, 1))
        k, v = self.kv(x).reshape(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


def test_a_spatial_reduction_conv_reshaped_by_the_input_width_follows_it() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), SpatialReductionAttention(), nn.Linear(16, 3)).eval()
    result = structprune.compress(model, torch.randn(2, 16, 6), ratio=0.5)
    attn = result.model[1]
    assert result.report.verification["ok"] and "blocked_by_verification" not in result.plan.meta
    assert list(result.plan.meta[TIES_KEY]) == [class_name(SpatialReductionAttention)]
    assert (attn.sr.in_channels, attn.sr.out_channels, attn.kv.out_features, attn.num_heads) == (8, 8, 16, 1)
