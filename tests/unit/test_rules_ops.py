"""Rules for ops Torch-Pruning handles (issue 11.6): recurrent layers, weights computed in the graph.
Each op: which axes the rule ties (or blocks, and why), and a small model using it pruned and verified."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import structprune
from helpers import group_with, outputs, positions, reason_kinds, refs
from structprune.ir.reasons import ReasonKind
from structprune.selection.plan import Plan

SEQ = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(1))
IMG = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))


def compress(model: nn.Module, x, **kw):
    torch.manual_seed(0)
    result = structprune.compress(model.eval(), x, **{"ratio": 0.5, **kw})
    assert result.report.verification["ok"]
    assert result.report.params_after < result.report.params_before
    return result


# ---- recurrent layers ------------------------------------------------------------------------------

class Recurrent(nn.Module):
    """Linear(6 -> 12) -> RNN(12 -> 16) -> last step -> Linear(-> 3)."""

    def __init__(self, cell=nn.LSTM, layers: int = 1, bidirectional: bool = False, hidden: int = 16,
                 given_state: bool = False) -> None:
        super().__init__()
        self.given_state = given_state
        self.inp = nn.Linear(6, 12)
        self.rnn = cell(12, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), 3)

    def forward(self, x, h0=None):
        y = self.rnn(torch.relu(self.inp(x)), h0)[0] if self.given_state else self.rnn(torch.relu(self.inp(x)))[0]
        return self.out(y[:, -1])


GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN], ids=["lstm", "gru", "rnn"])
def test_rnn_gate_blocks_lose_the_same_hidden_units(cell) -> None:
    graph = structprune.analyze(Recurrent(cell).eval(), SEQ)
    hidden = group_with(graph, "rnn.weight_hh_l0:1")
    assert hidden.prunable and hidden.exact and hidden.size == 16
    assert refs(hidden) == {"rnn.weight_hh_l0:1", "rnn.weight_ih_l0:0", "rnn.weight_hh_l0:0", "rnn.bias_ih_l0:0",
                            "rnn.bias_hh_l0:0", "out.weight:1"}
    gates = GATES[cell]
    assert positions(hidden, "rnn.weight_ih_l0:0") == list(range(16)) * gates  # G blocks of H rows
    assert positions(hidden, "rnn.bias_hh_l0:0") == list(range(16)) * gates
    features = group_with(graph, "inp.weight:0")
    assert features.prunable and "rnn.weight_ih_l0:1" in refs(features)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN], ids=["lstm", "gru", "rnn"])
def test_rnn_model_is_pruned_and_verified(cell) -> None:
    result = compress(Recurrent(cell), SEQ)
    rnn = result.model.rnn
    assert (rnn.input_size, rnn.hidden_size) == (6, 8)
    assert rnn.weight_ih_l0.shape == (GATES[cell] * 8, 6) and rnn.weight_hh_l0.shape == (GATES[cell] * 8, 8)
    assert result.model.out.in_features == 8
    assert result.report.verification["masking_error"] < 1e-5
    assert outputs(result.model, torch.randn(3, 7, 6)).shape == (3, 3)


def test_stacked_bidirectional_lstm_keeps_one_hidden_size_for_every_layer_and_direction() -> None:
    graph = structprune.analyze(Recurrent(nn.LSTM, layers=2, bidirectional=True).eval(), SEQ)
    hidden = group_with(graph, "rnn.weight_hh_l0:1")
    expected = {"rnn.weight_hh_l1_reverse:1", "rnn.weight_ih_l1:1", "rnn.weight_ih_l1_reverse:1", "out.weight:1"}
    assert expected <= refs(hidden)
    assert positions(hidden, "rnn.weight_ih_l1:1") == list(range(16)) * 2  # cat(forward h, backward h)
    result = compress(Recurrent(nn.LSTM, layers=2, bidirectional=True), SEQ)
    rnn = result.model.rnn
    assert rnn.hidden_size == 8 and rnn.weight_ih_l1_reverse.shape == (32, 16) and result.model.out.in_features == 16


def test_rnn_initial_state_from_the_caller_blocks_the_hidden_units() -> None:
    net = Recurrent(nn.GRU, given_state=True).eval()
    graph = structprune.analyze(net, (SEQ, torch.zeros(1, 2, 16)))
    hidden = group_with(graph, "rnn.weight_hh_l0:1")
    assert not hidden.prunable and reason_kinds(hidden) == {ReasonKind.MODEL_INPUT}
    assert group_with(graph, "inp.weight:0").prunable


def test_lstm_with_projections_is_blocked_naming_the_op() -> None:
    net = nn.Sequential(nn.Linear(6, 12), nn.LSTM(12, 16, proj_size=4, batch_first=True))
    group = group_with(structprune.analyze(net.eval(), SEQ), "0.weight:0")
    assert not group.prunable and "aten.lstm (recurrent layer with projections" in group.reasons[0].detail


# ---- weights computed in the graph -----------------------------------------------------------------

class StoredWeights(nn.Module):
    """F.conv2d / F.linear with nn.Parameter attributes, optionally through a computed weight."""

    def __init__(self, computed: bool) -> None:
        super().__init__()
        self.computed = computed
        self.w = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.scale = nn.Parameter(torch.rand(8, 1, 1, 1) + 0.5)
        self.b = nn.Parameter(torch.randn(8) * 0.1)
        self.lw = nn.Parameter(torch.randn(4, 8) * 0.3)

    def forward(self, x):
        if self.computed:
            y = torch.relu(F.conv2d(x, self.w * self.scale, self.b * 2.0, padding=1))
            return F.linear(y.mean((2, 3)), self.lw.t().t() * 0.5)
        return F.linear(torch.relu(F.conv2d(x, self.w, self.b, padding=1)).mean((2, 3)), self.lw)


@pytest.mark.parametrize("computed", [False, True], ids=["parameter", "computed"])
def test_stored_and_computed_weights_tie_every_parameter_axis(computed: bool) -> None:
    graph = structprune.analyze(StoredWeights(computed).eval(), IMG)
    group = group_with(graph, "w:0")
    assert group.prunable and group.exact and group.size == 8
    assert refs(group) == {"w:0", "b:0", "lw:1"} | ({"scale:0"} if computed else set())
    result = compress(StoredWeights(computed), IMG)
    assert (result.model.w.shape, result.model.scale.shape[0], result.model.b.shape, result.model.lw.shape) == \
        ((4, 3, 3, 3), 8 if not computed else 4, (4,), (4, 4))
    assert result.report.verification["masking_error"] < 1e-5


class SharedComputedWeight(nn.Module):
    """The computed weight is also read by a non-layer op: its axes cannot be followed, so it blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3, 1, 1))
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        w = self.w * 2.0
        return self.c(F.conv2d(x, w) + w.sum())


def test_a_computed_weight_read_elsewhere_is_blocked_naming_the_layer() -> None:
    group = group_with(structprune.analyze(SharedComputedWeight().eval(), IMG), "c.weight:1")
    assert not group.prunable
    assert any("aten.conv2d (convolution whose weight is not a parameter)" in r.detail for r in group.reasons)


class TransposedReads(nn.Module):
    """Linear layers that read their weight as Falcon's FalconLinear does: `x @ self.weight.T` (and the
    `.t()` / `.transpose(0, 1)` spellings), between a norm and a residual add."""

    def __init__(self, spelling: str) -> None:
        super().__init__()
        self.spelling = spelling
        self.norm = nn.LayerNorm(6)
        self.up = nn.Parameter(torch.randn(16, 6) * 0.3)
        self.down = nn.Parameter(torch.randn(6, 16) * 0.3)

    def read(self, w: torch.Tensor) -> torch.Tensor:
        return {"T": lambda: w.T, "t": w.t, "transpose": lambda: w.transpose(0, 1)}[self.spelling]()

    def forward(self, x):
        return x + torch.relu(self.norm(x) @ self.read(self.up)) @ self.read(self.down)


@pytest.mark.parametrize("spelling", ["T", "t", "transpose"])
def test_a_weight_read_through_a_transpose_by_matmul_is_a_linear_layer(spelling: str) -> None:
    """These layers used to form no group at all (nothing prunable, no reason given)."""
    group = group_with(structprune.analyze(TransposedReads(spelling).eval(), SEQ), "up:0")
    assert group.prunable and group.exact and group.size == 16 and refs(group) == {"up:0", "down:1"}
    result = compress(TransposedReads(spelling), SEQ)
    assert (result.model.up.shape, result.model.down.shape) == ((8, 6), (6, 8))


class FusedGroupedQKV(nn.Module):
    """Falcon's fused grouped-query projection: per KV group, `heads` query slots then one key and one
    value slot; the key and value are picked by a constant index along the slot dim."""

    def __init__(self, groups: int = 2, heads: int = 2, head_dim: int = 4, hidden: int = 6) -> None:
        super().__init__()
        self.groups, self.heads, self.head_dim = groups, heads, head_dim
        self.qkv = nn.Linear(hidden, groups * (heads + 2) * head_dim, bias=False)
        self.out = nn.Linear(groups * heads * head_dim, hidden, bias=False)

    def forward(self, x):
        b, s, _ = x.shape
        fused = self.qkv(x).view(b, s, self.groups, self.heads + 2, self.head_dim)
        q = fused[:, :, :, :-2]
        k = fused[:, :, :, torch.tensor([self.heads])].expand_as(q)
        v = fused[:, :, :, torch.tensor([self.heads + 1])].expand_as(q)
        q, k, v = (t.flatten(2, 3).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.out(y.transpose(1, 2).reshape(b, s, -1))


def test_a_constant_index_along_the_slot_dim_keeps_the_slots_and_prunes_whole_groups() -> None:
    group = group_with(structprune.analyze(FusedGroupedQKV().eval(), SEQ), "qkv.weight:0")
    assert group.prunable and group.size == 2  # components: the KV groups, each with all its slots
    result = compress(FusedGroupedQKV(), SEQ)
    assert result.model.qkv.out_features == 16 and result.model.out.in_features == 8
    model = FusedGroupedQKV().eval()
    model.qkv.weight.data.view(2, -1, 6)[1] = 0.0  # group 1 silent: pruning it away changes nothing
    model.out.weight.data[:, 8:] = 0.0
    pruned = structprune.apply_plan(model, SEQ, Plan({group.id: (0,)}, {group.id: 2}))
    assert pruned.qkv.out_features == 16
    assert torch.allclose(outputs(pruned, SEQ), outputs(model, SEQ), atol=1e-6)


class IndexedChannels(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(3, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))[..., torch.tensor([0, 2, 5])])


def test_a_constant_index_along_the_only_channel_dim_blocks_naming_it() -> None:
    group = group_with(structprune.analyze(IndexedChannels().eval(), SEQ), "a.weight:0")
    assert not group.prunable and reason_kinds(group) == {ReasonKind.FIXED_SIZE}
    assert "advanced indexing along a channel dim" in group.reasons[0].detail


class ChannelPositions(nn.Module):
    """Linear(6 -> 8) whose activation's values or positions along its channels select rows of a table."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 4)
        self.table = nn.Parameter(torch.randn(10, 4, generator=torch.Generator().manual_seed(3)))
        self.emb = nn.Embedding(10, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        codes = (h * 3).long().clamp(max=9)  # indices computed from each channel's value
        picked = {"argmax": lambda: self.table[h.argmax(-1)],
                  "max_indices": lambda: self.table[torch.max(h, -1).indices],
                  "max_values": lambda: torch.max(h, -1).values.unsqueeze(-1),
                  "index_from_values": lambda: self.table[codes].sum(-2),
                  "embedding_from_values": lambda: self.emb(codes).sum(-2),
                  "index_select_from_values": lambda: self.table.index_select(0, codes[0, 0]).sum(0)}[self.how]()
        return self.b(h) + picked


@pytest.mark.parametrize("how, detail", [
    ("argmax", "argmax over a channel dim returns channel positions"),
    ("max_indices", "max over a channel dim returns channel positions"),
    ("index_from_values", "advanced indexing reads indices computed from channel values"),
    ("embedding_from_values", "embedding reads indices computed from channel values"),
    ("index_select_from_values", "index_select reads indices computed from channel values"),
])
def test_channel_positions_or_values_used_as_indices_block_naming_the_op(how: str, detail: str) -> None:
    """Pruning would change what these indices point at, and verification's masked model (which keeps
    every position) could not see it: before this rule each of these compressed and verified silently."""
    group = group_with(structprune.analyze(ChannelPositions(how).eval(), SEQ), "a.weight:0")
    assert not group.prunable and reason_kinds(group) == {ReasonKind.DATA_DIMENSION}
    assert detail in group.reasons[0].detail


class HeadwiseArgmax(nn.Module):
    """Per head of a Linear(6 -> 8) viewed as 2 heads x 4 dims, the position of its largest dim."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        top = h.view(*h.shape[:-1], -1, 4).argmax(-1).float()  # (batch, tokens, heads)
        return self.b(h) + top.sum(-1, keepdim=True)


def test_argmax_within_each_head_keeps_the_heads_prunable_as_whole_units() -> None:
    group = group_with(structprune.analyze(HeadwiseArgmax().eval(), SEQ), "a.weight:0")
    assert group.prunable and group.size == 2  # each head's 4 dims one unit: positions within it stay valid
    model = HeadwiseArgmax().eval()
    pruned = structprune.apply_plan(model, SEQ, Plan({group.id: (1,)}, {group.id: 2}))
    masked = copy.deepcopy(model)
    with torch.no_grad():  # head 0 silenced: its argmax is 0, as if it were gone
        masked.a.weight[:4] = 0.0
        masked.a.bias[:4] = 0.0
        masked.b.weight[:, :4] = 0.0
    assert pruned.a.out_features == 4
    assert torch.allclose(outputs(pruned, SEQ), outputs(masked, SEQ), atol=1e-6)


def test_max_over_channels_read_for_its_values_only_stays_prunable() -> None:
    group = group_with(structprune.analyze(ChannelPositions("max_values").eval(), SEQ), "a.weight:0")
    assert group.prunable and not group.exact and group.inexact_ops == ("max",)
    assert compress(ChannelPositions("max_values"), SEQ).model.a.out_features == 4


# ---- pixel shuffle, index_select, interpolate, unbind ---------------------------------------------

class PixelShuffles(nn.Module):
    """Conv(3 -> 32) -> pixel_shuffle(2) -> Conv(8 -> 4) -> pixel_unshuffle(2) -> Conv(16 -> 6)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(16, 6, 1)

    def forward(self, x):
        y = self.b(F.pixel_shuffle(torch.relu(self.a(x)), 2))
        return self.c(F.pixel_unshuffle(torch.relu(y), 2))


def test_pixel_shuffle_prunes_whole_blocks_and_unshuffle_repeats_channels() -> None:
    graph = structprune.analyze(PixelShuffles().eval(), IMG)
    upscaled = group_with(graph, "a.weight:0")
    assert upscaled.prunable and upscaled.size == 8
    assert positions(upscaled, "a.weight:0") == [c for c in range(8) for _ in range(4)]  # blocks of r² = 4
    assert positions(upscaled, "b.weight:1") == list(range(8))
    folded = group_with(graph, "b.weight:0")
    assert folded.prunable and folded.size == 4
    assert positions(folded, "c.weight:1") == [c for c in range(4) for _ in range(4)]
    result = compress(PixelShuffles(), IMG)
    assert (result.model.a.out_channels, result.model.b.in_channels, result.model.b.out_channels,
            result.model.c.in_channels) == (16, 4, 2, 8)
    assert result.report.verification["masking_error"] < 1e-6


class SpatialIndexSelect(nn.Module):
    def __init__(self, channel_dim: bool = False) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8 if not channel_dim else 3, 4, 1)
        self.register_buffer("rows", torch.tensor([0, 2, 3]))
        self.dim = 1 if channel_dim else 2

    def forward(self, x):
        return self.b(torch.relu(self.a(x)).index_select(self.dim, self.rows))


def test_index_select_along_space_passes_channels_and_along_channels_blocks() -> None:
    group = group_with(structprune.analyze(SpatialIndexSelect().eval(), IMG), "a.weight:0")
    assert group.prunable and group.exact and refs(group) == {"a.weight:0", "a.bias:0", "b.weight:1"}
    result = compress(SpatialIndexSelect(), IMG)
    assert result.model.a.out_channels == result.model.b.in_channels == 4
    assert outputs(result.model, IMG).shape == (2, 4, 3, 8)
    blocked = structprune.analyze(SpatialIndexSelect(channel_dim=True).eval(), IMG)
    for ref in ("a.weight:0", "b.weight:1"):
        group = group_with(blocked, ref)
        assert not group.prunable and reason_kinds(group) == {ReasonKind.FIXED_SIZE}
        assert "index_select along a channel dim" in group.reasons[0].detail


class Resample(nn.Module):
    def __init__(self, mode: str, **kw) -> None:
        super().__init__()
        self.mode, self.kw = mode, kw
        self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.b(F.interpolate(torch.relu(self.a(x)), mode=self.mode, **self.kw))


@pytest.mark.parametrize("mode,kw", [
    ("nearest", {"scale_factor": 2}), ("bilinear", {"scale_factor": 1.5}),
    ("bicubic", {"scale_factor": 2, "antialias": True}), ("nearest-exact", {"size": (5, 5)}),
    ("area", {"size": (4, 4)}), ("bilinear", {"scale_factor": 0.5, "antialias": True}),
])
def test_interpolate_passes_channels_through(mode: str, kw: dict) -> None:
    group = group_with(structprune.analyze(Resample(mode, **kw).eval(), IMG), "a.weight:0")
    assert group.prunable and group.exact and refs(group) == {"a.weight:0", "a.bias:0", "b.weight:1"}
    result = compress(Resample(mode, **kw), IMG)
    assert result.model.a.out_channels == result.model.b.in_channels == 4


class UnbindQKV(nn.Module):
    """One projection to q, k, v, split by unbind (timm style); the 16-wide head dim is prunable."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.o = nn.Linear(8, 3 * 16), nn.Linear(16, 4)

    def forward(self, x):
        q, k, v = self.qkv(x).reshape(x.shape[0], 3, -1).unbind(1)
        return self.o(q * torch.sigmoid(k) + v)


def test_unbind_of_stacked_projections_ties_q_k_v_by_index() -> None:
    group = group_with(structprune.analyze(UnbindQKV().eval(), torch.randn(2, 8)), "qkv.weight:0")
    assert group.prunable and group.size == 16
    assert positions(group, "qkv.weight:0") == list(range(16)) * 3 and positions(group, "o.weight:1") == list(range(16))
    result = compress(UnbindQKV(), torch.randn(2, 8))
    assert result.model.qkv.out_features == 24 and result.model.o.in_features == 8


def test_unbind_along_the_only_channel_dim_blocks() -> None:
    net = nn.Sequential(nn.Linear(8, 3), _Unbind0())
    group = group_with(structprune.analyze(net.eval(), torch.randn(2, 8)), "0.weight:0")
    assert not group.prunable and ReasonKind.FIXED_SIZE in reason_kinds(group)
    assert any(r.detail == "unbind along a channel dim uses sizes fixed in the code" for r in group.reasons)


class _Unbind0(nn.Module):
    def forward(self, x):
        a, b, c = x.unbind(1)
        return a * b + c


class Autoencoder(nn.Module):
    """Linear(16 -> 8·4·4) -> nn.Unflatten(1, (8, 4, 4)) -> Conv(8 -> 3): the unflattened axis is channels."""

    def __init__(self) -> None:
        super().__init__()
        self.enc, self.unflatten, self.dec = nn.Linear(16, 128), nn.Unflatten(1, (8, 4, 4)), nn.Conv2d(8, 3, 1)

    def forward(self, x):
        return self.dec(torch.relu(self.unflatten(self.enc(x))))


def test_unflatten_makes_the_unflattened_axis_a_prunable_channel_of_blocks() -> None:
    group = group_with(structprune.analyze(Autoencoder().eval(), torch.randn(2, 16)), "enc.weight:0")
    assert group.prunable and group.exact and group.size == 8
    assert positions(group, "enc.weight:0") == [c for c in range(8) for _ in range(16)]
    assert positions(group, "dec.weight:1") == list(range(8))
    result = compress(Autoencoder(), torch.randn(2, 16))
    assert result.model.enc.out_features == 64 and result.model.dec.in_channels == 4


# ---- einsum ------------------------------------------------------------------------------------------

class EinsumMLP(nn.Module):
    """Projections written with einsum: x (b, n, 8) -> 16 hidden -> 4, the second weight stored (out, in)."""

    def __init__(self) -> None:
        super().__init__()
        self.w1, self.b1 = nn.Parameter(torch.randn(8, 16) * 0.3), nn.Parameter(torch.randn(16) * 0.1)
        self.w2 = nn.Parameter(torch.randn(4, 16) * 0.3)

    def forward(self, x):
        h = torch.relu(torch.einsum("bnd,de->bne", x, self.w1) + self.b1)
        return torch.einsum("...e,fe->...f", h, self.w2)


def test_einsum_projection_ties_the_contracted_label_like_a_linear_layer() -> None:
    x = torch.randn(2, 5, 8)
    graph = structprune.analyze(EinsumMLP().eval(), x)
    hidden = group_with(graph, "w1:1")
    assert hidden.prunable and hidden.exact and refs(hidden) == {"w1:1", "b1:0", "w2:1"}
    assert {m.role for m in hidden.members if m.fqn == "w2"} == {"in"}
    assert len(graph.groups) == 3  # w1's input axis (model input), the hidden width, w2's outputs (model output)
    result = compress(EinsumMLP(), x)
    assert result.model.w1.shape == (8, 8) and result.model.w2.shape == (4, 8)
    assert result.report.verification["masking_error"] < 1e-6


class EinsumAttention(nn.Module):
    """Multi-head attention written with einsum on (b, n, h, d) and (b, h, n, d) layouts."""

    def __init__(self, heads_first: bool) -> None:
        super().__init__()
        self.heads_first, self.num_heads = heads_first, 4
        self.q, self.k, self.v, self.o = (nn.Linear(16, 16) for _ in range(4))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (f(x).view(b, n, self.num_heads, -1) for f in (self.q, self.k, self.v))
        if self.heads_first:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            attn = torch.einsum("bhnd,bhmd->bhnm", q, k).softmax(-1)
            out = torch.einsum("bhnm,bhmd->bhnd", attn, v).transpose(1, 2)
        else:
            attn = torch.einsum("bnhd,bmhd->bhnm", q, k).softmax(-1)
            out = torch.einsum("bhnm,bmhd->bnhd", attn, v)
        return self.o(out.reshape(b, n, -1))


@pytest.mark.parametrize("heads_first", [True, False], ids=["bhnd", "bnhd"])
def test_einsum_attention_prunes_whole_heads(heads_first: bool) -> None:
    x = torch.randn(2, 5, 16)
    graph = structprune.analyze(EinsumAttention(heads_first).eval(), x)
    heads = group_with(graph, "q.weight:0")
    assert heads.prunable and heads.size == 4
    assert refs(heads) >= {"q.weight:0", "k.weight:0", "v.weight:0", "o.weight:1"}
    assert positions(heads, "q.weight:0") == [h for h in range(4) for _ in range(4)]  # head h = 4 rows
    result = compress(EinsumAttention(heads_first), x)
    assert result.model.q.out_features == result.model.o.in_features == 8 and result.model.num_heads == 2
    assert result.report.verification["masking_error"] < 1e-5


def test_einsum_attention_in_head_dims_mode_keeps_every_head() -> None:
    x = torch.randn(2, 5, 16)
    dims = group_with(structprune.analyze(EinsumAttention(True).eval(), x, attention="head_dims"), "q.weight:0")
    assert dims.prunable and dims.size == 4 and positions(dims, "q.weight:0") == list(range(4)) * 4
    result = compress(EinsumAttention(True), x, attention="head_dims")
    assert result.model.num_heads == 4 and result.model.q.out_features == 8


class Einsum(nn.Module):
    def __init__(self, equation: str, operands: int = 2, width: int = 8) -> None:
        super().__init__()
        self.equation = equation
        self.layers = nn.ModuleList(nn.Linear(4, width) for _ in range(operands))

    def forward(self, x):
        return torch.einsum(self.equation, *(layer(x) for layer in self.layers))


@pytest.mark.parametrize("equation,operands,kind,detail", [
    ("bi,bj,bk->bijk", 3, ReasonKind.UNSUPPORTED_OP, "aten.einsum (3 operands)"),
    ("bi,bj->bij", 2, ReasonKind.DATA_DIMENSION, "einsum output would be a product of channels"),
])
def test_einsum_blocks_what_it_cannot_express_with_the_reason(equation, operands, kind, detail) -> None:
    graph = structprune.analyze(Einsum(equation, operands).eval(), torch.randn(2, 4))
    group = group_with(graph, "layers.0.weight:0")
    assert not group.prunable and kind in reason_kinds(group)
    assert any(r.detail == detail for r in group.reasons)


def test_einsum_with_a_repeated_label_blocks_naming_it() -> None:
    net = nn.Sequential(nn.Linear(4, 16), nn.Unflatten(1, (4, 4)), _Diagonal(), nn.Linear(4, 2))
    group = group_with(structprune.analyze(net.eval(), torch.randn(2, 4)), "0.weight:0")
    assert not group.prunable and reason_kinds(group) == {ReasonKind.UNSUPPORTED_OP}
    assert group.reasons[0].detail == "aten.einsum (a label repeated within one operand)"


class _Diagonal(nn.Module):
    def forward(self, x):
        return torch.einsum("bii->bi", x)


def test_einsum_of_one_operand_permutes_and_sums() -> None:
    net = Sandwich(lambda t: torch.einsum("bchw->bcwh", t))
    group = group_with(structprune.analyze(net.eval(), IMG), "a.weight:0")
    assert group.prunable and group.exact and "c.weight:1" in refs(group)
    summed = group_with(structprune.analyze(Sandwich(lambda t: torch.einsum("bchw->bhw", t)[:, None]).eval(), IMG),
                        "a.weight:0")
    assert not summed.exact and "einsum" in summed.inexact_ops
    assert compress(Sandwich(lambda t: torch.einsum("bchw->bcwh", t)), IMG).model.c.in_channels == 4


class Sandwich(nn.Module):
    """Conv(3 -> 8) -> fn -> Conv(8 or 1 -> 4)."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn
        self.a = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(fn(torch.zeros(1, 8, 2, 2)).shape[1], 4, 1)

    def forward(self, x):
        return self.c(self.fn(torch.relu(self.a(x))))
