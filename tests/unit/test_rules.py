"""Per-rule tests on one-, two- and three-op modules: which axes each rule ties, which it blocks and
why, and that pruning the resulting groups rewrites the module into one that runs and verifies.

Tests of what a single op does to channels use `rule_harness.op_groups` (the op between parameter
probes `in{i}` / `out{j}`); the others build the few layers they need."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import structprune
from helpers import MHABlock, group_with, outputs, positions, randomize_norm_stats, reason_kinds, refs
from rule_harness import op_groups
from structprune.ir.reasons import ReasonKind
from structprune.rules import DEFAULT_RULES, rule_elementwise, rule_unsupported

IMG = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(3))


def analyze(model: nn.Module, x):
    return structprune.analyze(model.eval(), x)


def compress(model: nn.Module, x, **kw):
    return structprune.compress(model.eval(), x, **{"ratio": 0.5, **kw})


class Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


class Sandwich(nn.Module):
    """a: Conv(3 -> 8) -> body -> c: Conv(8 -> 4); the body is the op under test."""

    def __init__(self, body: nn.Module, a: nn.Module | None = None, c: nn.Module | None = None) -> None:
        super().__init__()
        self.a = a or nn.Conv2d(3, 8, 1)
        self.body = body
        self.c = c or nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(self.body(self.a(x)))


# ---- linear / conv chains --------------------------------------------------------------------------

class TwoLinear(nn.Module):
    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, hidden), nn.Linear(hidden, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_linear_relu_linear_is_one_prunable_group_of_the_hidden_width() -> None:
    graph = analyze(TwoLinear(8), torch.randn(2, 4))
    assert [(g.id, g.size) for g in graph.prunable] == [("fc1.weight:0", 8)]
    hidden = graph.prunable[0]
    assert refs(hidden) == {"fc1.weight:0", "fc1.bias:0", "fc2.weight:1"}
    assert {m.ref: m.role for m in hidden.members} == {"fc1.weight:0": "out", "fc1.bias:0": "out",
                                                      "fc2.weight:1": "in"}
    for m in hidden.members:
        assert m.positions.tolist() == list(range(8))
    assert hidden.exact and hidden.reasons == ()


def test_model_input_and_output_channels_are_blocked_with_typed_reasons() -> None:
    graph = analyze(TwoLinear(8), torch.randn(2, 4))
    inputs, outs = group_with(graph, "fc1.weight:1"), group_with(graph, "fc2.weight:0")
    assert not inputs.prunable and reason_kinds(inputs) == {ReasonKind.MODEL_INPUT}
    assert inputs.reasons[0].detail == "x"
    assert not outs.prunable and reason_kinds(outs) == {ReasonKind.MODEL_OUTPUT}
    assert refs(outs) == {"fc2.weight:0", "fc2.bias:0"}
    assert "tied to a model output" in str(outs.reasons[0])
    assert {g.id for g in graph.blocked} == {"fc1.weight:1", "fc2.weight:0"}


def test_conv_chain_input_channels_blocked_as_model_input() -> None:
    graph = analyze(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)), IMG)
    assert reason_kinds(group_with(graph, "0.weight:1")) == {ReasonKind.MODEL_INPUT}
    assert reason_kinds(group_with(graph, "2.weight:0")) == {ReasonKind.MODEL_OUTPUT}


# ---- residual add / cat / split / chunk --------------------------------------------------------------

class ResidualAdd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(self.a(x) + self.b(x))


def test_residual_add_ties_both_convs_outputs_into_one_group() -> None:
    graph = analyze(ResidualAdd(), IMG)
    assert len(graph.prunable) == 1
    group = graph.prunable[0]
    assert group.size == 8
    assert refs(group) == {"a.weight:0", "a.bias:0", "b.weight:0", "b.bias:0", "c.weight:1"}
    net = ResidualAdd().eval()
    result = compress(net, IMG)
    assert result.model.a.out_channels == result.model.b.out_channels == result.model.c.in_channels == 4
    kept = list(result.plan.keep[group.id])
    assert torch.equal(result.model.a.weight, net.a.weight.detach()[kept])
    assert torch.equal(result.model.b.weight, net.b.weight.detach()[kept])  # the same channels of both
    assert result.report.verification["masking_error"] <= 1e-6


class CatConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(10, 5, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], 1))


def test_cat_gives_two_groups_that_split_the_consumer_input_axis() -> None:
    cat = op_groups(lambda a, b: torch.cat([a, b], 1), (2, 4, 6, 6), (2, 6, 6, 6))
    first, second = cat.of("in0"), cat.of("in1")
    assert [(g.size, g.prunable, g.exact) for g in cat.groups] == [(4, True, True), (6, True, True)]
    assert first.positions["out0"] == (0, 1, 2, 3) + (-1,) * 6
    assert second.positions["out0"] == (-1,) * 4 + (0, 1, 2, 3, 4, 5)


def test_cat_along_the_last_dim_offsets_each_part_into_the_output() -> None:
    cat = op_groups(lambda a, b, c: torch.cat([a, b, c], -1), (2, 5, 2), (2, 5, 3), (2, 5, 1))
    assert [(g.size, g.prunable) for g in cat.groups] == [(2, True), (3, True), (1, True)]
    assert [g.positions["out0"] for g in cat.groups] == [(0, 1, -1, -1, -1, -1), (-1, -1, 0, 1, 2, -1),
                                                         (-1, -1, -1, -1, -1, 0)]


def test_cat_pruning_slices_the_consumer_columns_of_each_part() -> None:
    net = CatConvs().eval()
    result = compress(net, IMG)
    keep_a, keep_b = result.plan.keep["a.weight:0"], result.plan.keep["b.weight:0"]
    assert (len(keep_a), len(keep_b)) == (2, 3)
    columns = list(keep_a) + [4 + i for i in keep_b]
    assert result.model.c.in_channels == 5
    assert torch.equal(result.model.c.weight, net.c.weight.detach()[:, columns])
    assert torch.equal(result.model.a.weight, net.a.weight.detach()[list(keep_a)])


class ChunkConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(4, 5, 1), nn.Conv2d(4, 5, 1)

    def forward(self, x):
        p, q = self.a(x).chunk(2, dim=1)
        return self.b(p) + self.c(q)


def test_chunk_ties_local_indices_so_both_pieces_keep_the_same_count() -> None:
    graph = analyze(ChunkConvs(), IMG)
    group = group_with(graph, "a.weight:0")
    assert group.size == 4 and group.prunable
    assert positions(group, "a.weight:0") == [0, 1, 2, 3, 0, 1, 2, 3]
    assert positions(group, "b.weight:1") == positions(group, "c.weight:1") == [0, 1, 2, 3]
    result = compress(ChunkConvs(), IMG)
    assert result.model.a.out_channels == 4
    assert result.model.b.in_channels == result.model.c.in_channels == 2


def test_split_with_literal_sizes_blocks_both_parts_as_fixed_size() -> None:
    split = op_groups(lambda x: x.split([3, 5], dim=1), (2, 8, 6, 6))
    assert [(g.size, g.prunable, g.reasons) for g in split.groups] == [(3, False, {ReasonKind.FIXED_SIZE}),
                                                                        (5, False, {ReasonKind.FIXED_SIZE})]
    assert all("split" in g.details[0] for g in split.groups)
    assert split.of("out0").positions["in0"] == (0, 1, 2) + (-1,) * 5
    assert split.of("out1").positions == {"in0": (-1,) * 3 + (0, 1, 2, 3, 4), "out1": (0, 1, 2, 3, 4)}


def test_split_into_equal_pieces_ties_the_same_local_channels_of_each_piece() -> None:
    split = op_groups(lambda x: x.split(4, dim=1), (2, 8, 6, 6))
    [group] = split.groups
    assert (group.size, group.prunable, group.exact) == (4, True, True)
    assert group.positions == {"in0": (0, 1, 2, 3, 0, 1, 2, 3), "out0": (0, 1, 2, 3), "out1": (0, 1, 2, 3)}
    assert group.assumptions == ("split into 2 x 4 channels follows the pruned width",)  # verification checks it


def test_slice_of_channels_blocks_as_fixed_size() -> None:
    sliced = op_groups(lambda t: t[:, :3], (2, 8, 6, 6))  # an equal piece (t[:, :4]) is an assumption instead
    assert sorted((g.size, g.prunable, g.reasons) for g in sliced.groups) == [(3, False, {ReasonKind.FIXED_SIZE}),
                                                                               (5, False, {ReasonKind.FIXED_SIZE})]
    kept = sliced.of("out0")
    assert kept.positions == {"in0": (0, 1, 2, -1, -1, -1, -1, -1), "out0": (0, 1, 2)}


# ---- depthwise / grouped convolutions -----------------------------------------------------------------

class Depthwise(nn.Module):
    def __init__(self, multiplier: int = 2) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.dw = nn.Conv2d(4, 4 * multiplier, 3, padding=1, groups=4)
        self.c = nn.Conv2d(4 * multiplier, 5, 1)

    def forward(self, x):
        return self.c(torch.relu(self.dw(self.a(x))))


def test_depthwise_conv_ties_its_input_and_output_channels() -> None:
    graph = analyze(Depthwise(2), IMG)
    group = group_with(graph, "dw.weight:0")
    assert group.size == 4  # the input channels: each owns `multiplier` outputs
    assert "a.weight:0" in refs(group) and "c.weight:1" in refs(group)
    assert positions(group, "dw.weight:0") == [0, 0, 1, 1, 2, 2, 3, 3]
    assert positions(group, "c.weight:1") == [0, 0, 1, 1, 2, 2, 3, 3]
    assert len(graph.prunable) == 1


def test_depthwise_pruning_keeps_the_multiplier_and_groups_equal_in_channels() -> None:
    net = Depthwise(2).eval()
    result = compress(net, IMG)
    kept = list(result.plan.keep["a.weight:0"])
    dw = result.model.dw
    assert (dw.in_channels, dw.out_channels, dw.groups) == (2, 4, 2)
    rows = [r for k in kept for r in (2 * k, 2 * k + 1)]
    assert torch.equal(dw.weight, net.dw.weight.detach()[rows])
    assert outputs(result.model, IMG).shape == (2, 5, 6, 6)


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.g, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 6, 3, padding=1, groups=2), nn.Conv2d(6, 5, 1)

    def forward(self, x):
        return self.c(self.g(self.a(x)))


def test_grouped_conv_ties_local_channel_indices_across_groups() -> None:
    graph = analyze(Grouped(), IMG)
    into, out = group_with(graph, "g.weight:1"), group_with(graph, "g.weight:0")
    assert into.size == 4 and positions(into, "a.weight:0") == [0, 1, 2, 3, 0, 1, 2, 3]
    assert out.size == 3 and positions(out, "g.weight:0") == [0, 1, 2, 0, 1, 2]
    assert positions(out, "c.weight:1") == [0, 1, 2, 0, 1, 2]


def test_grouped_conv_pruning_keeps_groups_and_equal_counts_per_group() -> None:
    net = Grouped().eval()
    result = compress(net, IMG)
    g = result.model.g  # 3 outputs per group at ratio 0.5: 1.5 rounds to 2 removed, the same in each group
    assert g.groups == 2 and g.in_channels == 4 and g.out_channels == 2
    keep_in, keep_out = result.plan.keep["a.weight:0"], result.plan.keep["g.weight:0"]
    rows = sorted(list(keep_out) + [3 + k for k in keep_out])
    torch.testing.assert_close(g.weight, net.g.weight.detach()[rows][:, list(keep_in)], rtol=0, atol=0)
    assert outputs(result.model, IMG).shape == (2, 5, 6, 6)
    assert result.report.verification["masking_error"] <= 1e-5


# ---- flatten / permute / transpose / shuffle ------------------------------------------------------------

class FlattenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 2 * 3, 5)

    def forward(self, x):
        return self.fc(self.a(x).flatten(1))


def test_flatten_into_linear_gives_each_channel_its_h_times_w_columns() -> None:
    x = torch.randn(2, 3, 2, 3)
    group = group_with(analyze(FlattenLinear(), x), "a.weight:0")
    assert group.size == 4 and group.prunable
    assert positions(group, "fc.weight:1") == np.repeat(np.arange(4), 6).tolist()
    net = FlattenLinear().eval()
    result = compress(net, x)
    kept = result.plan.keep["a.weight:0"]
    columns = [6 * k + j for k in kept for j in range(6)]
    assert result.model.fc.in_features == 12
    assert torch.equal(result.model.fc.weight, net.fc.weight.detach()[:, columns])


class ChannelsLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc = nn.Conv2d(3, 8, 1), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.a(x).permute(0, 2, 3, 1))


def test_permute_moves_the_channel_dim_to_a_linear_input() -> None:
    graph = analyze(ChannelsLast(), IMG)
    group = group_with(graph, "a.weight:0")
    assert refs(group) == {"a.weight:0", "a.bias:0", "fc.weight:1"} and group.size == 8
    result = compress(ChannelsLast(), IMG)
    assert result.model.a.out_channels == result.model.fc.in_features == 4


class TokenMixer(nn.Module):
    """a: features; b mixes tokens (a Linear over the sequence dim after a transpose); c: features."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 8), nn.Linear(6, 6), nn.Linear(8, 2)

    def forward(self, x):  # x: (B, 6 tokens, 3)
        h = self.a(x)
        return self.c(self.b(h.transpose(1, 2)).transpose(1, 2))


def test_transpose_round_trip_keeps_feature_channels_and_blocks_token_axis() -> None:
    graph = analyze(TokenMixer(), torch.randn(2, 6, 3))
    features = group_with(graph, "a.weight:0")
    assert refs(features) == {"a.weight:0", "a.bias:0", "c.weight:1"} and features.prunable
    tokens = group_with(graph, "b.weight:1")
    assert not tokens.prunable and ReasonKind.DATA_DIMENSION in reason_kinds(tokens)
    result = compress(TokenMixer(), torch.randn(2, 6, 3))
    assert result.model.c.in_features == 4 and result.model.b.in_features == 6


class ViewShuffle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 5, 1)

    def forward(self, x):
        y = self.a(x)
        b, c, h, w = y.shape
        y = y.view(b, 2, c // 2, h, w).transpose(1, 2).reshape(b, c, h, w)
        return self.c(y)


def test_channel_shuffle_by_view_transpose_view_ties_the_grid_columns() -> None:
    graph = analyze(ViewShuffle(), IMG)
    group = group_with(graph, "a.weight:0")
    assert group.size == 4 and group.prunable
    assert positions(group, "a.weight:0") == [0, 1, 2, 3, 0, 1, 2, 3]
    assert positions(group, "c.weight:1") == [0, 0, 1, 1, 2, 2, 3, 3]
    result = compress(ViewShuffle(), IMG)
    assert result.model.a.out_channels == result.model.c.in_channels == 4
    assert result.report.verification["masking_error"] <= 1e-6


def test_nn_channel_shuffle_prunes_like_the_view_transpose_shuffle() -> None:
    net = Sandwich(nn.ChannelShuffle(2))
    group = group_with(analyze(net, IMG), "a.weight:0")
    assert group.size == 4
    result = compress(net, IMG)
    assert result.model.a.out_channels == 4


# ---- normalisations -----------------------------------------------------------------------------------

def test_batch_norm_params_and_running_stats_join_the_conv_group_exactly() -> None:
    net = randomize_norm_stats(nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1)))
    group = group_with(analyze(net, IMG), "0.weight:0")
    assert refs(group) == {"0.weight:0", "0.bias:0", "1.weight:0", "1.bias:0", "1.running_mean:0",
                           "1.running_var:0", "3.weight:1"}
    assert {m.role for m in group.members if m.fqn.startswith("1.")} == {"elem"}
    assert group.exact
    result = compress(net, IMG)
    bn = result.model[1]
    assert bn.num_features == 4 and bn.running_mean.shape == (4,)
    kept = list(result.plan.keep[group.id])
    assert torch.equal(bn.running_var, net[1].running_var[kept])
    assert result.report.verification["masking_error"] <= 1e-5


def test_layer_norm_group_is_flagged_inexact_and_checked_by_shapes() -> None:
    net = nn.Sequential(nn.Linear(3, 8), nn.LayerNorm(8), nn.Linear(8, 4))
    group = group_with(analyze(net, torch.randn(2, 3)), "0.weight:0")
    assert refs(group) == {"0.weight:0", "0.bias:0", "1.weight:0", "1.bias:0", "2.weight:1"}
    assert group.prunable and not group.exact and group.inexact_ops == ("layer_norm",)
    result = compress(net, torch.randn(2, 3))
    assert result.model[1].normalized_shape == (4,)
    verification = result.report.verification
    assert verification["inexact_groups"] == ["0.weight:0"] and verification["exact_groups"] == []
    assert verification["masking_error"] is None and verification["ok"]


def test_group_norm_ties_local_indices_across_groups_and_is_inexact() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 1))
    group = group_with(analyze(net, IMG), "0.weight:0")
    assert group.size == 4 and not group.exact and "group_norm" in group.inexact_ops
    assert positions(group, "1.weight:0") == [0, 1, 2, 3, 0, 1, 2, 3]
    result = compress(net, IMG)
    gn = result.model[1]
    assert (gn.num_groups, gn.num_channels) == (2, 4)
    assert outputs(result.model, IMG).shape == (2, 4, 6, 6)


class LayerNorm2d(nn.Module):
    """The channels-first LayerNorm of ConvNeXt's reference code: mean/var over dim 1 by hand."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.rand(channels) + 0.5), nn.Parameter(torch.randn(channels))

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        var = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(var + 1e-6)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def test_hand_written_channel_mean_keeps_per_channel_groups_flagged_inexact() -> None:
    net = Sandwich(LayerNorm2d(8))
    group = group_with(analyze(net, IMG), "a.weight:0")
    assert group.size == 8 and not group.exact
    assert compress(net, IMG).model.c.in_channels == 4


@pytest.mark.parametrize(("softmax", "shape"), [
    pytest.param(nn.Softmax(dim=1), (2, 8, 6, 6), id="images_dim_1"),
    pytest.param(lambda t: t.softmax(-1), (2, 5, 8), id="tokens_last_dim"),
])
def test_softmax_over_the_channel_dim_is_prunable_but_inexact(softmax, shape) -> None:
    [group] = op_groups(softmax, shape).groups
    assert (group.size, group.prunable, group.exact, group.inexact_ops) == (8, True, False, ("softmax",))
    assert group.positions == {"in0": tuple(range(8)), "out0": tuple(range(8))}


def test_softmax_over_a_spatial_dim_keeps_the_channels_exact() -> None:
    [group] = op_groups(lambda t: t.softmax(-1), (2, 8, 6, 6)).groups
    assert (group.size, group.prunable, group.exact, group.inexact_ops) == (8, True, True, ())


# ---- embeddings and attention -------------------------------------------------------------------------

class EmbedClassify(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.fc = nn.Embedding(10, 8), nn.Linear(8, 3)

    def forward(self, ids):
        return self.fc(self.embed(ids)).mean(1)


def test_embedding_dim_is_a_prunable_group_and_vocab_is_not_a_channel() -> None:
    ids = torch.randint(0, 10, (2, 5))
    graph = analyze(EmbedClassify(), ids)
    group = group_with(graph, "embed.weight:1")
    assert refs(group) == {"embed.weight:1", "fc.weight:1"} and group.size == 8 and group.prunable
    assert all(not m.ref == "embed.weight:0" for g in graph.groups for m in g.members)
    result = compress(EmbedClassify(), ids)
    assert (result.model.embed.num_embeddings, result.model.embed.embedding_dim) == (10, 4)


class SelfAttention(nn.Module):
    """q/k/v/o projections around F.scaled_dot_product_attention; the head count follows the weights."""

    def __init__(self, dim: int = 12, heads: int = 3) -> None:
        super().__init__()
        self.head_dim = dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, n, _ = x.shape

        def split(t):
            return t.view(b, n, -1, self.head_dim).transpose(1, 2)

        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.o(y.transpose(1, 2).reshape(b, n, -1))


def test_sdpa_groups_whole_heads() -> None:
    graph = analyze(SelfAttention(12, 3), torch.randn(2, 5, 12))
    assert len(graph.prunable) == 1
    heads = graph.prunable[0]
    assert heads.size == 3  # num_heads
    assert refs(heads) == {f"{p}.{t}:0" for p in "qkv" for t in ("weight", "bias")} | {"o.weight:1"}
    for m in heads.members:
        assert m.positions.tolist() == np.repeat(np.arange(3), 4).tolist()


def test_sdpa_pruning_removes_whole_heads_and_verifies() -> None:
    x = torch.randn(2, 5, 12)
    result = compress(SelfAttention(12, 3), x)
    model = result.model
    # 3 heads at ratio 0.5: 1.5 heads round to 2 removed, one head of 4 dims kept
    assert model.q.out_features == model.k.out_features == model.v.out_features == model.o.in_features == 4
    kept = result.plan.keep["q.weight:0"]
    assert len(kept) == 1
    assert outputs(model, x).shape == (2, 5, 12)
    assert result.report.verification["masking_error"] <= 1e-5


def test_multihead_attention_heads_tie_projections_and_embed_dim() -> None:
    graph = analyze(MHABlock(), torch.randn(2, 5, 4))
    heads = group_with(graph, "mha.in_proj_weight:1")
    assert heads.size == 3 and heads.prunable
    assert {"inp.weight:0", "mha.in_proj_weight:0", "mha.in_proj_bias:0", "mha.out_proj.weight:1"} <= refs(heads)
    assert positions(heads, "mha.in_proj_weight:0") == np.tile(np.repeat(np.arange(3), 4), 3).tolist()
    out = group_with(graph, "mha.out_proj.weight:0")
    assert out.size == 12 and "fc.weight:1" in refs(out)


def test_multihead_attention_pruning_updates_heads_and_runs() -> None:
    x = torch.randn(2, 5, 4)
    result = compress(MHABlock(), x)
    mha = result.model.mha
    assert (mha.num_heads, mha.embed_dim, mha.head_dim) == (1, 4, 4)  # 1.5 of 3 heads round to 2 removed
    assert mha.in_proj_weight.shape == (12, 4)
    assert outputs(result.model, x).shape == (2, 5, 2)
    assert result.report.verification["masking_error"] <= 1e-5


class MatmulParameter(nn.Module):
    """x @ W with a raw 2-D nn.Parameter W (CLIP-style projection): W's rows consume, its columns produce."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(4, 8), nn.Linear(6, 2)
        self.w = nn.Parameter(torch.randn(8, 6))

    def forward(self, x):
        return self.c(torch.relu(self.a(x) @ self.w))


def test_matmul_with_a_raw_parameter_acts_like_a_linear_weight() -> None:
    x = torch.randn(2, 4)
    graph = analyze(MatmulParameter(), x)
    assert refs(group_with(graph, "w:0")) == {"a.weight:0", "a.bias:0", "w:0"}
    assert refs(group_with(graph, "w:1")) == {"w:1", "c.weight:1"}
    result = compress(MatmulParameter(), x)
    assert result.model.w.shape == (4, 3) and result.model.c.in_features == 3


# ---- element-wise and broadcasting ----------------------------------------------------------------------

class LayerScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)

    def forward(self, x):
        return self.c(self.a(x) * self.gamma)


def test_raw_parameter_layer_scale_is_a_member_and_gets_sliced() -> None:
    graph = analyze(LayerScale(), IMG)
    group = group_with(graph, "gamma:0")
    assert "a.weight:0" in refs(group) and "c.weight:1" in refs(group)
    assert [m.role for m in group.members if m.fqn == "gamma"] == ["elem"]
    net = LayerScale().eval()
    result = compress(net, IMG)
    kept = list(result.plan.keep[group.id])
    assert result.model.gamma.shape == (4, 1, 1)
    assert isinstance(result.model.gamma, nn.Parameter)
    assert torch.equal(result.model.gamma, net.gamma.detach()[kept])


class SpatialMask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x, mask):
        return self.c(self.a(x) * mask)


def test_broadcast_against_a_spatial_mask_couples_nothing() -> None:
    x, mask = IMG, (torch.rand(2, 1, 6, 6) > 0.5).float()
    graph = analyze(SpatialMask(), (x, mask))
    group = group_with(graph, "a.weight:0")
    assert group.size == 8 and group.prunable and group.exact
    assert refs(group) == {"a.weight:0", "a.bias:0", "c.weight:1"}
    result = compress(SpatialMask(), (x, mask))
    assert result.model.c.in_channels == 4
    assert result.report.verification["masking_error"] <= 1e-6


class GatedByConv(nn.Module):
    """A (B,1,H,W) gate computed by a 1-channel conv multiplies an 8-channel map."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.gate, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 1, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.c(self.a(x) * torch.sigmoid(self.gate(x)))


def test_broadcast_one_channel_gate_does_not_join_the_feature_group() -> None:
    graph = analyze(GatedByConv(), IMG)
    features, gate = group_with(graph, "a.weight:0"), group_with(graph, "gate.weight:0")
    assert features.size == 8 and gate.size == 1 and features.id != gate.id
    assert not any(m.fqn.startswith("gate.") for m in features.members)


class NormalizedTokens(nn.Module):
    """F.normalize over the channels, as SwiftFormer's additive attention: the norm is expanded back over the
    channels before the division; an expanded value broadcasts like its source, so the channels stay apart."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.c(torch.nn.functional.normalize(self.a(x), dim=-1))


def test_an_expanded_norm_broadcasts_like_its_source_and_keeps_the_channels_apart() -> None:
    x = torch.randn(2, 5, 6)
    group = group_with(analyze(NormalizedTokens(), x), "a.weight:0")
    assert group.size == 8 and group.prunable and not group.exact  # the norm mixes the channels: parity only
    result = compress(NormalizedTokens().eval(), x)
    assert result.model.a.out_features == 4 and result.report.verification["ok"]


@pytest.mark.parametrize("body", [
    pytest.param(nn.InstanceNorm2d(8, affine=True), id="instance_norm"),
    pytest.param(nn.PReLU(8), id="prelu_per_channel"),
    pytest.param(nn.PReLU(), id="prelu_shared"),
    pytest.param(nn.Upsample(scale_factor=2), id="upsample"),
    pytest.param(nn.Sequential(nn.MaxPool2d(2), nn.AvgPool2d(1)), id="pooling"),
    pytest.param(Lambda(lambda t: t.flip(1)), id="flip_channels"),
    pytest.param(Lambda(lambda t: t.roll(1, 1)), id="roll_channels"),
    pytest.param(Lambda(lambda t: F.pad(t, (1, 1, 1, 1))), id="spatial_pad"),
    pytest.param(Lambda(lambda t: t * torch.sigmoid(t) + F.gelu(t).clamp(-1, 1)), id="activations"),
    pytest.param(nn.Dropout(0.2), id="dropout"),
])
def test_per_channel_ops_pass_the_group_through_and_verify(body: nn.Module) -> None:
    net = Sandwich(body)
    group = group_with(analyze(net, IMG), "a.weight:0")
    assert group.size == 8 and group.prunable and group.exact
    assert "c.weight:1" in refs(group)
    result = compress(net, IMG)
    assert result.model.a.out_channels == result.model.c.in_channels == 4
    assert result.report.verification["masking_error"] <= 1e-5


def test_conv_transpose_output_axis_is_weight_axis_one() -> None:
    net = Sandwich(nn.ConvTranspose2d(8, 6, 2, stride=2), c=nn.Conv2d(6, 4, 1))
    graph = analyze(net, IMG)
    into, out = group_with(graph, "body.weight:0"), group_with(graph, "body.weight:1")
    assert "a.weight:0" in refs(into) and into.size == 8
    assert refs(out) == {"body.weight:1", "body.bias:0", "c.weight:1"} and out.size == 6
    result = compress(net, IMG)
    assert (result.model.body.in_channels, result.model.body.out_channels) == (4, 3)


def test_padding_the_channel_dim_blocks_with_the_reason() -> None:
    group = op_groups(lambda t: F.pad(t, (0, 0, 0, 0, 0, 2)), (2, 8, 6, 6)).of("in0")
    assert not group.prunable and group.reasons == {ReasonKind.UNSUPPORTED_OP}
    assert "padding along a channel dim" in group.details[0]


class ConstantScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.scale = torch.rand(8, 1, 1)  # a plain attribute: a lifted constant, not state

    def forward(self, x):
        return self.c(self.a(x) * self.scale)


def test_tensor_constant_with_a_channel_axis_blocks() -> None:
    group = group_with(analyze(ConstantScale(), IMG), "a.weight:0")
    assert not group.prunable and reason_kinds(group) == {ReasonKind.TENSOR_CONSTANT}
    assert compress(ConstantScale(), IMG).model.a.out_channels == 8


# ---- ops without a rule, and extending the table --------------------------------------------------------

@torch.library.custom_op("structprune_tests::scaled_relu", mutates_args=())
def scaled_relu(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_min(0) * 2


@scaled_relu.register_fake
def _scaled_relu_fake(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


OPS = {
    "sort": lambda t: torch.sort(t, dim=-1).values,
    "fft": lambda t: torch.fft.fft(t).real,
    "custom_op": lambda t: scaled_relu(t),
}


class Around(nn.Module):
    """fc1 -> op -> fc2 for an op under test (looked up by name: a custom op does not deep-copy)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.fc1, self.fc2, self.op = nn.Linear(3, 8), nn.Linear(8, 4), op

    def forward(self, x):
        return self.fc2(OPS[self.op](self.fc1(x)))


@pytest.mark.parametrize(("op", "key"), [
    ("sort", "aten.sort"),
    ("fft", "aten.fft_fft"),
    ("custom_op", "structprune_tests.scaled_relu"),
])
def test_op_without_a_rule_blocks_and_names_the_op(op: str, key: str) -> None:
    graph = analyze(Around(op), torch.randn(2, 3))
    producer = group_with(graph, "fc1.weight:0")
    assert not producer.prunable
    unsupported = [r for r in producer.reasons if r.kind == ReasonKind.UNSUPPORTED_OP]
    assert [r.detail for r in unsupported] == [key]
    assert key in str(unsupported[0]) and unsupported[0].node
    assert not group_with(graph, "fc2.weight:1").prunable
    assert graph.prunable == ()


def test_extended_rule_table_makes_the_custom_op_prunable_without_mutating_the_default() -> None:
    rules = DEFAULT_RULES | {"structprune_tests.scaled_relu": rule_elementwise}
    assert "structprune_tests.scaled_relu" not in DEFAULT_RULES
    graph = structprune.analyze(Around("custom_op").eval(), torch.randn(2, 3), rules=rules)
    group = group_with(graph, "fc1.weight:0")
    assert group.prunable and refs(group) == {"fc1.weight:0", "fc1.bias:0", "fc2.weight:1"}
    result = structprune.compress(Around("custom_op").eval(), torch.randn(2, 3), ratio=0.5, rules=rules)
    assert result.model.fc1.out_features == result.model.fc2.in_features == 4
    assert result.report.verification["masking_error"] <= 1e-6
    with pytest.raises(TypeError):
        DEFAULT_RULES["structprune_tests.scaled_relu"] = rule_elementwise  # type: ignore[index]


def test_overriding_a_default_rule_changes_the_analysis() -> None:
    assert op_groups(torch.relu, (2, 8)).of("in0").prunable
    relu = op_groups(torch.relu, (2, 8), rules=DEFAULT_RULES | {"aten.relu": rule_unsupported})
    hidden = relu.of("in0")
    assert not hidden.prunable and hidden.reasons == {ReasonKind.UNSUPPORTED_OP}
    assert [r.detail for r in relu.graph.group(hidden.id).reasons] == ["aten.relu"]
