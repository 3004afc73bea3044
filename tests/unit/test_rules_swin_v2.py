"""Swin V2 window attention (torchvision's ShiftedWindowAttentionV2): whole heads prune together through the
packed q|k|v bias whose k third is zeroed in place, the per-head logit scale, and the continuous position
bias - an MLP over a persistent table of relative coordinates, picked by a relative position index.

Three rules make that work, each tested alone: in-place fills (`zero_`, `fill_`) pass ids through; a slice
at exactly k/n..(k+1)/n of the only channel dim is an equal piece (an assumption verification confirms),
other slices stay blocked; a float buffer that only Linear layers read as input is data.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import structprune
from helpers import group_with, refs
from rule_harness import op_groups
from structprune.ir.reasons import ReasonKind
from structprune.selection.plan import Plan

DIM, HEADS, WINDOW = 32, 4, 3
TOKENS = WINDOW * WINDOW


def _relative_coords_table(window: int) -> torch.Tensor:
    """(1, 2W-1, 2W-1, 2) log-spaced relative coordinates, as torchvision builds them."""
    span = torch.arange(-(window - 1), window, dtype=torch.float32) / (window - 1) * 8
    table = torch.stack(torch.meshgrid([span, span], indexing="ij")).permute(1, 2, 0).unsqueeze(0)
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / 3.0


def _relative_position_index(window: int) -> torch.Tensor:
    coords = torch.stack(torch.meshgrid([torch.arange(window)] * 2, indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return (rel[:, :, 0] * (2 * window - 1) + rel[:, :, 1]).flatten()


class WindowAttentionV2(nn.Module):
    """Cosine attention over one window with a per-head logit scale and a continuous position bias. The head
    width is the input width over the head count, as in torchvision (so the two prune together), or its own
    attribute (`head_dim`), so heads can be pruned alone."""

    def __init__(self, dim: int = DIM, num_heads: int = HEADS, window: int = WINDOW, head_dim: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads if head_dim else None
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.logit_scale = nn.Parameter(math.log(10) + 0.1 * torch.randn(num_heads, 1, 1))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 16), nn.ReLU(inplace=True), nn.Linear(16, num_heads, bias=False))
        self.register_buffer("relative_coords_table", _relative_coords_table(window))
        self.register_buffer("relative_position_index", _relative_position_index(window))

    def position_bias(self, tokens: int) -> torch.Tensor:
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.num_heads)
        bias = table[self.relative_position_index].view(tokens, tokens, -1).permute(2, 0, 1).contiguous()
        return 16 * torch.sigmoid(bias.unsqueeze(0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        c = self.num_heads * self.head_dim if self.head_dim else x.shape[-1]
        qkv_bias = self.qkv.bias.clone()
        length = qkv_bias.numel() // 3
        qkv_bias[length:2 * length].zero_()
        qkv = F.linear(x, self.qkv.weight, qkv_bias).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=math.log(100.0)).exp() + self.position_bias(n)
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c))


class Net(nn.Module):
    def __init__(self, head_dim: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.attn, self.head = nn.Linear(5, DIM), WindowAttentionV2(head_dim=head_dim), nn.Linear(DIM, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        return self.head((h + self.attn(h)).mean(1))


X = torch.randn(2, TOKENS, 5, generator=torch.Generator().manual_seed(1))


def test_heads_group_holds_whole_heads_with_the_logit_scale_and_the_position_bias_rows() -> None:
    graph = structprune.analyze(Net().eval(), X)
    heads = group_with(graph, "attn.qkv.weight:0")
    assert (heads.size, heads.prunable) == (HEADS, True)
    assert {"attn.qkv.bias:0", "attn.logit_scale:0", "attn.cpb_mlp.2.weight:0", "attn.proj.weight:1"} <= refs(heads)
    assert "slice 2 of 3 equal pieces follows the pruned width" in heads.assumptions
    hidden = group_with(graph, "attn.cpb_mlp.0.weight:0")  # the position-bias MLP's own width
    assert (hidden.size, hidden.prunable) == (16, True)
    assert not any(m.fqn == "attn.relative_coords_table" for g in graph.groups for m in g.members)
    assert [g.id for g in graph.groups if g.reasons and "attn" in g.id] == []


def test_compress_prunes_heads_and_verifies() -> None:
    result = structprune.compress(Net().eval(), X, ratio=0.5)
    assert result.report.verification["ok"]
    attn = result.model.attn
    assert attn.num_heads == HEADS // 2
    assert tuple(attn.qkv.weight.shape)[0] == 3 * attn.num_heads * (DIM // HEADS)
    assert tuple(attn.logit_scale.shape) == (attn.num_heads, 1, 1)
    assert tuple(attn.cpb_mlp[2].weight.shape)[0] == attn.num_heads
    assert result.report.params_after < result.report.params_before


def test_pruning_heads_equals_the_dense_model_with_their_output_zeroed() -> None:
    net = Net(head_dim=True).eval()
    graph = structprune.analyze(net, X)
    heads = group_with(graph, "attn.qkv.weight:0")
    assert heads.exact  # q and k are normalised over each head's own dims: whole heads mask exactly
    kept = (0, 2)
    pruned = structprune.apply_plan(net, X, Plan({heads.id: kept}, {heads.id: heads.size}), graph=graph)
    assert pruned.attn.num_heads == len(kept)
    masked = Net(head_dim=True).eval()
    masked.load_state_dict(net.state_dict())
    head_dim = DIM // HEADS
    with torch.no_grad():
        for h in set(range(HEADS)) - set(kept):
            masked.attn.proj.weight[:, h * head_dim:(h + 1) * head_dim] = 0
        torch.testing.assert_close(pruned(X), masked(X), rtol=1e-5, atol=1e-6)


# ---- the rules alone -------------------------------------------------------------------------------------

def _zeroed(t: torch.Tensor) -> torch.Tensor:
    out = t.clone()
    out.zero_()
    return out + t


def _filled(t: torch.Tensor) -> torch.Tensor:
    out = t.clone()
    out.fill_(2.0)
    return out * t


@pytest.mark.parametrize("op", [_zeroed, _filled])
def test_inplace_fill_passes_channels_through_and_ties_nothing(op) -> None:
    [group] = op_groups(op, (2, 4, 8)).groups
    assert (group.size, group.prunable, group.exact) == (8, True, True)
    assert group.positions == {"in0": tuple(range(8)), "out0": tuple(range(8))}


def test_zeroing_a_slice_along_a_data_dim_keeps_every_channel() -> None:
    def op(t):
        out = t.clone()
        out[:, :1].zero_()
        return out

    [group] = op_groups(op, (2, 4, 8)).groups
    assert (group.size, group.prunable) == (8, True)


def _zero_middle_third(t: torch.Tensor) -> torch.Tensor:
    out = t.clone()
    n = out.shape[-1] // 3
    out[..., n:2 * n].zero_()
    return out


def test_slice_of_an_equal_third_ties_the_three_pieces_as_an_assumption() -> None:
    [group] = op_groups(_zero_middle_third, (2, 4, 12)).groups
    assert (group.size, group.prunable) == (4, True)
    assert group.positions["in0"] == (0, 1, 2, 3) * 3
    assert group.assumptions == ("slice 2 of 3 equal pieces follows the pruned width",)


@pytest.mark.parametrize("bounds", [(2, 7), (0, 5), (4, 12, 2)])
def test_slice_of_unequal_or_strided_pieces_stays_blocked(bounds) -> None:
    start, end, *step = bounds
    sliced = op_groups(lambda t: t[..., start:end:(step[0] if step else 1)], (2, 4, 12))
    assert all(not g.prunable and g.reasons == {ReasonKind.FIXED_SIZE} for g in sliced.groups)
    assert any("slice along a channel dim" in d for g in sliced.groups for d in g.details)


class Halves(nn.Module):
    """A gated unit that slices its projection into halves, from the width (`literal=False`) or from a
    literal that only holds for the unpruned width."""

    def __init__(self, literal: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.literal = literal
        self.fc1, self.fc2 = nn.Linear(6, 16), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        n = 8 if self.literal else h.shape[-1] // 2
        return self.fc2(h[..., :n] * torch.sigmoid(h[..., n:]))


def test_equal_slice_from_the_width_prunes_and_verifies() -> None:
    x = torch.randn(3, 6)
    result = structprune.compress(Halves(literal=False).eval(), x, ratio=0.5)
    assert result.report.verification["ok"]
    assert result.model.fc1.out_features == 2 * result.model.fc2.in_features < 16


def test_equal_slice_with_a_literal_bound_is_kept_whole_by_verification() -> None:
    x = torch.randn(3, 6)
    result = structprune.compress(Halves(literal=True).eval(), x, ratio=0.5)
    assert result.report.verification["ok"]
    assert result.model.fc1.out_features == 16 and result.model.fc2.in_features == 8


class TableMLP(nn.Module):
    """An MLP over a float buffer of shape (positions, features), also summed over its features when `summed`."""

    def __init__(self, summed: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.summed = summed
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)
        self.register_buffer("table", torch.randn(3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(self.table)
        if self.summed:
            h = h + self.table.sum(-1, keepdim=True)
        return self.fc2(torch.relu(h)) + x


def test_a_buffer_only_linear_layers_read_is_data_so_their_outputs_prune() -> None:
    graph = structprune.analyze(TableMLP(summed=False).eval(), torch.randn(3, 2))
    hidden = group_with(graph, "fc1.weight:0")
    assert (hidden.size, hidden.prunable) == (8, True)
    assert group_with(graph, "fc1.weight:1").size == 1  # the table's features are constants: one unit
    assert not any(m.fqn == "table" for g in graph.groups for m in g.members)


def test_a_buffer_other_ops_read_keeps_its_grid_of_channels() -> None:
    graph = structprune.analyze(TableMLP(summed=True).eval(), torch.randn(3, 2))
    hidden = group_with(graph, "fc1.weight:0")
    assert not hidden.prunable
    assert any("form a product with input channels" in str(r) for r in hidden.reasons)


def test_a_reduction_over_channels_is_exact_only_where_each_fibre_is_one_unit() -> None:
    per_head = op_groups(lambda t: F.normalize(t.unflatten(-1, (4, 3)), dim=-1).flatten(-2), (2, 5, 12))
    [head] = per_head.groups  # each head's 3 dims are tied by the normalisation: one unit, masked exactly
    assert (head.size, head.exact, head.positions["in0"]) == (4, True, (0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3))
    across = op_groups(lambda t: t / t.norm(dim=-1, keepdim=True), (2, 5, 12))
    assert [(g.size, g.exact, g.inexact_ops) for g in across.groups] == [(12, False, ("linalg_vector_norm",))]
