"""Channel attention (cross-covariance attention: EdgeNeXt's XCA, DaViT's ChannelAttention) attends over
a head's dims instead of its tokens: qᵀk is head_dim x head_dim per head. Whole heads are prunable
through it; per-head dims are not (a row and a column of that matrix would go with different dims)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import structprune


class CrossCovarianceAttention(nn.Module):
    """EdgeNeXt/XCiT style: normalised q and k over tokens, a learned temperature per head."""

    def __init__(self, dim: int, num_heads: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.rand(num_heads, 1, 1) + 0.5)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 4, 1)
        q, k, v = qkv.unbind(0)
        attn = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * self.temperature
        x = (attn.softmax(dim=-1) @ v).permute(0, 3, 1, 2).reshape(B, N, C)
        return self.proj(x)


class DavitChannelAttention(nn.Module):
    """DaViT style: kᵀv over tokens, applied to qᵀ."""

    def __init__(self, dim: int, num_heads: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        attn = ((k * self.scale).transpose(-1, -2) @ v).softmax(dim=-1)
        x = (attn @ q.transpose(-1, -2)).transpose(-1, -2).transpose(1, 2).reshape(B, N, C)
        return self.proj(x)


class Block(nn.Module):
    def __init__(self, attention: type[nn.Module]):
        super().__init__()
        self.embed = nn.Linear(8, 32)
        self.attn = attention(32)
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(h)
        return self.head(h.mean(1))


@pytest.mark.parametrize("attention", [CrossCovarianceAttention, DavitChannelAttention])
@pytest.mark.parametrize("ratio, heads_kept", [(0.25, 3), (0.5, 2), (0.75, 1)])
def test_whole_heads_are_pruned_through_channel_attention(attention, ratio, heads_kept):
    torch.manual_seed(0)
    net = Block(attention).eval()
    x = torch.randn(2, 6, 8)
    result = structprune.compress(net, x, ratio=ratio)
    assert result.report.verification["ok"]
    assert result.model.attn.num_heads == heads_kept
    assert result.model.attn.qkv.weight.shape == (3 * 8 * heads_kept, 8 * heads_kept)
    assert result.model(torch.randn(3, 6, 8)).shape == (3, 5)
    assert "blocked_by_verification" not in result.plan.meta


@pytest.mark.parametrize("attention", [CrossCovarianceAttention, DavitChannelAttention])
def test_a_heads_dims_block_is_one_exact_unit(attention):
    """The head's d x d scores are softmaxed along its own dims: with the whole head as one unit the
    masking check stays exact, so verification compares values, not only shapes."""
    graph = structprune.analyze(Block(attention).eval(), torch.randn(2, 6, 8))
    heads = [g for g in graph.prunable if g.size == 4]
    assert len(heads) == 1 and heads[0].exact


def test_per_head_dims_through_channel_attention_are_blocked_with_the_reason():
    graph = structprune.analyze(Block(CrossCovarianceAttention).eval(), torch.randn(2, 6, 8), attention="head_dims")
    reasons = [r.detail for g in graph.blocked for r in g.reasons]
    assert any("product of channels" in r for r in reasons)
