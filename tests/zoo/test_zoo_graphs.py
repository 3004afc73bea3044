"""ChannelGraph invariants on every zoo model, and the coupling structure each zoo family stresses."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import models_zoo
import structprune
from helpers import assert_state_equal, group_with, positions, reason_kinds, refs, snapshot_state
from structprune.ir.reasons import Reason, ReasonKind

ZOO = models_zoo.list_models()
_GRAPHS: dict[str, structprune.ChannelGraph] = {}


def zoo_graph(name: str) -> structprune.ChannelGraph:
    """Analysis of a zoo model with its default inputs (cached per worker: analysis is pure)."""
    if name not in _GRAPHS:
        torch.manual_seed(0)
        _GRAPHS[name] = structprune.analyze(models_zoo.create(name).eval(), models_zoo.example_inputs(name))
    return _GRAPHS[name]


# ---- invariants ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ZOO)
def test_groups_partition_every_member_axis(name: str) -> None:
    """Each position of a member axis is in exactly one group; each member covers all its group's channels."""
    graph = zoo_graph(name)
    coverage: dict[str, np.ndarray] = {}
    for group in graph.groups:
        assert group.size >= 1 and len(group.components) == group.size
        for m in group.members:
            owned = m.positions[m.positions >= 0]
            assert set(owned.tolist()) == set(range(group.size)), (group.id, m.ref)
            coverage[m.ref] = coverage.get(m.ref, np.zeros(m.positions.size, int)) + (m.positions >= 0)
    for ref, count in coverage.items():
        assert (count == 1).all(), f"{ref} positions owned by {sorted(set(count.tolist()))} groups"


@pytest.mark.parametrize("name", ZOO)
def test_group_flags_ids_and_lookup_are_consistent(name: str) -> None:
    graph = zoo_graph(name)
    ids = [g.id for g in graph.groups]
    assert len(set(ids)) == len(ids)
    assert set(graph.prunable) | set(graph.blocked) == set(graph.groups)
    assert not set(graph.prunable) & set(graph.blocked)
    for group in graph.groups:
        assert group.prunable == (group.reasons == ())
        assert group.exact == (group.inexact_ops == ())
        assert graph.group(group.id) is group
        assert group.id.split("#")[0] == group.members[0].ref
    assert graph.prunable, f"{name} has no prunable group"
    with pytest.raises(KeyError):
        graph.group("no.such.group:0")


@pytest.mark.parametrize("name", ZOO)
def test_classifier_output_blocked_and_input_channels_blocked(name: str) -> None:
    graph = zoo_graph(name)
    out_kinds = {r.kind for g in graph.blocked for r in g.reasons}
    assert ReasonKind.MODEL_OUTPUT in out_kinds
    head = [g for g in graph.blocked if ReasonKind.MODEL_OUTPUT in reason_kinds(g)]
    assert [g.size for g in head] == [models_zoo.spec(name).num_classes]
    if models_zoo.spec(name).input_kind != "tokens":  # token ids are indices, not channels
        assert ReasonKind.MODEL_INPUT in out_kinds


def test_summary_and_json_describe_every_group() -> None:
    graph = zoo_graph("cnn")
    text = graph.summary()
    assert text.startswith(f"{len(graph.prunable)} prunable groups, {len(graph.blocked)} blocked")
    for group in graph.groups:
        assert group.id in text
    assert "tied to a model output" in text
    data = json.loads(json.dumps([g.to_json() for g in graph.groups]))
    fc1 = next(d for d in data if d["id"] == "fc1.weight:0")
    assert fc1 == {"id": "fc1.weight:0", "size": 120, "prunable": True, "exact": True,
                   "members": ["fc1.weight:0", "fc1.bias:0", "fc2.weight:1"], "reasons": [], "inexact_ops": []}
    out = next(d for d in data if d["id"] == "fc2.weight:0")
    assert out["reasons"][0]["kind"] == "model_output"


def test_reason_text_names_kind_detail_and_node() -> None:
    reason = Reason(ReasonKind.UNSUPPORTED_OP, "aten.sort", "sort_1")
    assert str(reason) == "passes through an op without a channel rule: aten.sort (node sort_1)"
    assert reason.to_json() == {"kind": "unsupported_op", "detail": "aten.sort", "node": "sort_1",
                                "text": str(reason)}
    assert str(Reason(ReasonKind.USER_IGNORED)) == "ignored by the user"


def test_analysis_is_deterministic_and_leaves_the_model_alone() -> None:
    net = models_zoo.create("resnet20").train()
    before = snapshot_state(net)
    x = models_zoo.example_inputs("resnet20")
    first, second = structprune.analyze(net, x), structprune.analyze(net, x)
    assert net.training
    assert_state_equal(net.state_dict(), before)
    assert [(g.id, g.size, g.prunable) for g in first.groups] == [(g.id, g.size, g.prunable) for g in second.groups]
    for a, b in zip(first.groups, second.groups):
        assert [(m.ref, m.positions.tolist()) for m in a.members] == [(m.ref, m.positions.tolist()) for m in b.members]


# ---- the structure each zoo family stresses ------------------------------------------------------------

def test_resnet20_stage_residual_chain_is_one_group() -> None:
    graph = zoo_graph("resnet20")
    stem = graph.group("stem.0.weight:0")
    assert stem.size == 16 and stem.prunable
    expected = {"stem.0.weight:0", "stages.0.0.conv2.weight:0", "stages.0.1.conv2.weight:0",
                "stages.0.2.conv2.weight:0", "stages.1.0.conv1.weight:1", "stages.1.0.downsample.0.weight:1"}
    assert expected <= refs(stem)
    inner = graph.group("stages.0.0.conv1.weight:0")
    assert {m.fqn.rsplit(".", 1)[0] for m in inner.members} == {"stages.0.0.conv1", "stages.0.0.bn1",
                                                                 "stages.0.0.conv2"}
    assert len(graph.prunable) == 12


def test_mobilenet_expand_depthwise_project_share_one_group() -> None:
    graph = zoo_graph("mobilenet_v2")
    group = graph.group("features.2.conv.0.0.weight:0")
    assert group.size == 96
    assert {"features.2.conv.1.0.weight:0", "features.2.conv.2.0.weight:1"} <= refs(group)
    assert "features.2.conv.1.0.weight:1" not in refs(group)  # depthwise in-axis has size 1


def test_densenet_concat_offsets_into_later_consumers() -> None:
    graph = zoo_graph("densenet")
    new = graph.group("features.1.conv.2.weight:0")
    assert new.size == 8
    assert positions(new, "features.2.bottleneck.2.weight:1") == [-1] * 16 + list(range(8))
    assert positions(new, "features.3.2.weight:1") == [-1] * 16 + list(range(8)) + [-1] * 8


def test_csp_chunk_ties_the_two_halves_of_cv1() -> None:
    group = zoo_graph("csp").group("features.2.cv1.conv.weight:0")
    assert group.size == 16
    assert positions(group, "features.2.cv1.conv.weight:0") == list(range(16)) * 2


@pytest.mark.parametrize(("name", "prefix", "heads", "head_dim"), [
    ("vit", "blocks.0.attn.qkv", 4, 8),
    ("bert", "bert.encoder.layer.0.attention.self.query", 4, 8),
])
def test_attention_heads_are_whole_groups(name: str, prefix: str, heads: int, head_dim: int) -> None:
    group = zoo_graph(name).group(f"{prefix}.weight:0")
    assert group.size == heads and group.prunable and group.exact
    rows = positions(group, f"{prefix}.weight:0")
    per_projection = np.repeat(np.arange(heads), head_dim).tolist()
    assert rows == per_projection * (len(rows) // len(per_projection))


def test_vit_hidden_dim_group_holds_tokens_and_norms_and_is_inexact() -> None:
    group = zoo_graph("vit").group("patch_embed.weight:0")
    assert {"cls_token:2", "pos_embed:2", "norm.weight:0", "head.weight:1"} <= refs(group)
    assert not group.exact and "layer_norm" in group.inexact_ops


def test_flatten_member_of_cnn_owns_spatial_blocks() -> None:
    group = group_with(zoo_graph("cnn"), "features.3.weight:0")
    assert group.size == 16
    assert positions(group, "fc1.weight:1") == np.repeat(np.arange(16), 8 * 8).tolist()
