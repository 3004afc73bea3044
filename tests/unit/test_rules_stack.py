"""`torch.stack` is cat of its tensors unsqueezed at the new dim: the tensors' other dims line up, so
their ids are tied position by position. Rotary position embeddings rotate a head's dims in pairs with
`stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)` (timm's EVA-02); before stack had a rule
it blocked every attention head (eva02_tiny_patch14_224 with a classifier: 1.46x -> 2.58x at 0.5)."""
from __future__ import annotations

import torch
from torch import nn

import structprune
from helpers import group_with


class Stacked(nn.Module):
    """Two linear branches stacked on a new leading dim, then summed over it."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(4, 8), nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.stack([self.a(x), self.b(x)], 0).sum(0))


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    return torch.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)


class RopeAttention(nn.Module):
    """Attention with rotary embeddings on q and k; widths come from stored head attributes."""

    def __init__(self, dim: int, heads: int, tokens: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        angles = torch.arange(tokens)[:, None] * torch.rand(self.head_dim // 2).repeat_interleave(2)[None]
        self.register_buffer("sin", angles.sin(), persistent=False)
        self.register_buffer("cos", angles.cos(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = (t * self.cos + rotate_pairs(t) * self.sin for t in (q, k))
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, self.num_heads * self.head_dim))


class RopeNet(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, tokens: int = 5) -> None:
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(6, dim), RopeAttention(dim, heads, tokens), nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        return self.head((x + self.attn(x)).mean(1))


def test_stacked_branches_are_tied_position_by_position() -> None:
    graph = structprune.analyze(Stacked().eval(), torch.randn(3, 4))
    group = group_with(graph, "a.weight:0")
    assert group is group_with(graph, "b.weight:0") and group.prunable and group.size == 8


def test_rotary_attention_keeps_its_heads_prunable() -> None:
    torch.manual_seed(0)
    graph = structprune.analyze(RopeNet().eval(), torch.randn(2, 5, 6))
    heads = group_with(graph, "attn.proj.weight:1")
    assert heads.prunable and heads.size == 4
    assert not any("stack" in str(r) for g in graph.groups for r in g.reasons)


def test_rotary_attention_loses_whole_heads_and_verifies() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6)
    result = structprune.compress(RopeNet().eval(), x, ratio=0.5)
    assert result.report.verification["ok"]
    attn = result.model.attn
    assert attn.num_heads == 2 and attn.qkv.out_features == 3 * 2 * 8 and attn.proj.in_features == 16
    assert result.model(torch.randn(3, 5, 6)).shape == (3, 3)
