"""A float buffer left out of the state_dict (`persistent=False`) that is pieced into a channel-carrying value
(`cat`) or added to one holds one entry per channel: it joins that value's groups and the rewrite slices the
module's own copy. timm's Swin V2 builds its q|k|v bias as `cat((q_bias, k_bias, v_bias))` with `k_bias` such
a zero buffer; taking it for data tied every head and head dim into one unit. A buffer used any other way
(RoPE's `inv_freq`, read through a product with positions) stays data: test_decoder_blocks.py.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import structprune
from helpers import group_with, outputs, refs

DIM, HEADS, TOKENS = 16, 4, 5


class ZeroKeyBiasAttention(nn.Module):
    """Attention whose packed q|k|v bias has a zero key third kept as a non-persistent buffer (timm Swin V2)."""

    def __init__(self, dim: int = DIM, num_heads: int = HEADS) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(0.1 * torch.randn(dim))
        self.register_buffer("k_bias", torch.zeros(dim), persistent=False)
        self.v_bias = nn.Parameter(0.1 * torch.randn(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1))


class ShiftedMLP(nn.Module):
    """A hidden layer plus a per-channel offset kept out of the state_dict (non-zero: the slice must be right)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(DIM, 12), nn.Linear(12, 3)
        self.register_buffer("offset", torch.linspace(-1.0, 1.0, 12), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x) + self.offset))


class Net(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.embed, self.block = nn.Linear(6, DIM), block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.embed(x))


def _net(block: type) -> nn.Module:
    torch.manual_seed(0)
    return Net(block()).eval()


X = torch.randn(2, TOKENS, 6)


def test_a_zero_key_bias_buffer_pieced_into_the_qkv_bias_joins_the_head_group() -> None:
    graph = structprune.analyze(_net(ZeroKeyBiasAttention), X)
    heads = group_with(graph, "block.k_bias:0")
    assert heads.prunable and heads.size == HEADS  # whole heads, not one unit
    assert {"block.q_bias:0", "block.v_bias:0", "block.qkv.weight:0", "block.proj.weight:1"} <= refs(heads)


def test_heads_prune_and_the_module_holds_a_sliced_key_bias_that_a_reload_rebuilds() -> None:
    net = _net(ZeroKeyBiasAttention)
    result = structprune.compress(net, X, ratio=0.5)
    pruned = result.model.block
    assert result.report.verification["ok"]
    assert pruned.num_heads == HEADS // 2
    assert pruned.k_bias.shape == pruned.q_bias.shape == (DIM // 2,) and not pruned.k_bias.any()
    assert "block.k_bias" not in result.model.state_dict()
    rebuilt = structprune.apply_plan(_net(ZeroKeyBiasAttention), X, result.plan, verify=False)
    rebuilt.load_state_dict(result.model.state_dict(), strict=True)
    assert rebuilt.block.k_bias.shape == (DIM // 2,)
    torch.testing.assert_close(outputs(rebuilt, X), outputs(result.model, X))


def test_an_added_non_persistent_offset_is_sliced_with_the_channels_it_shifts() -> None:
    net = _net(ShiftedMLP)
    hidden = group_with(structprune.analyze(net, X), "block.offset:0")
    assert hidden.prunable and hidden.size == 12 and "block.fc1.weight:0" in refs(hidden)
    result = structprune.compress(net, X, ratio=0.5)
    assert result.report.verification["ok"]
    kept = result.plan.keep[hidden.id]
    assert result.model.block.fc1.out_features == len(kept) == 6
    torch.testing.assert_close(result.model.block.offset, net.block.offset[list(kept)])
