"""Cross attention with separate `wq`/`wk`/`wv` projections (CrossViT's, and the original LLaMA naming):
the class token queries every token, and heads are reshaped with `C // self.num_heads` from the input
width. The `wq` projection is recognised as the query projection, so verification's re-capture failure
ties the class to its input width and the residual width is pruned with the heads instead of being kept
whole (crossvit_tiny_240: 1.57x -> 2.49x at ratio 0.5)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import structprune
from structprune.api import TIES_KEY, class_name
from structprune.rewrite.attention_attrs import AttentionShape, attention_shape


class CrossAttention(nn.Module):
    """The class token (position 0) attends to all tokens; widths come from the input."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.num_heads = heads
        self.wq, self.wk, self.wv = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.wq(x[:, 0:1]).reshape(B, 1, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        k = self.wk(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        v = self.wv(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        attn = ((q @ k.transpose(-2, -1)) * (C // self.num_heads) ** -0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, 1, C))


class CrossNet(nn.Module):
    def __init__(self, dim: int = 24, heads: int = 4) -> None:
        super().__init__()
        self.embed, self.norm = nn.Linear(6, dim), nn.LayerNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        cls = x[:, 0:1] + self.attn(self.norm(x))
        return self.head((cls + self.mlp(cls))[:, 0])


def _model() -> nn.Module:
    torch.manual_seed(0)
    return CrossNet().eval()


def test_wq_is_a_query_projection() -> None:
    assert attention_shape(CrossAttention(24, 4)) == AttentionShape("wq", 24, 4)


@pytest.mark.parametrize("attention", ["heads", "head_dims"])
def test_cross_attention_ties_its_heads_to_the_residual_and_prunes_both(attention: str) -> None:
    x = torch.randn(2, 5, 6)
    result = structprune.compress(_model(), x, ratio=0.3, attention=attention)
    assert result.report.verification["ok"]
    assert result.plan.meta[TIES_KEY] == [class_name(CrossAttention)]
    assert "blocked_by_verification" not in result.plan.meta
    attn, width = result.model.attn, result.model.embed.out_features
    assert width < 24 and attn.wq.out_features == attn.wv.out_features == attn.proj.in_features == width
    assert width % attn.num_heads == 0 and (attn.num_heads == 4) == (attention == "head_dims")
    assert result.model(torch.randn(3, 5, 6)).shape == (3, 3)
