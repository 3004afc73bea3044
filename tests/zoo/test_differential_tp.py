"""Differential oracle: Torch-Pruning, told to drop exactly the channels structprune's plan drops,
must build the same pruned model (same outputs, same parameter count, same tensors)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import models_zoo
import structprune
from helpers import dropped, outputs
from structprune.graph.channel_graph import ChannelGroup

tp = pytest.importorskip("torch_pruning")


def anchor(group: ChannelGroup):
    """The group's first conv/linear out-channel member: Torch-Pruning's entry point for the group."""
    return next(m for m in group.members if m.role == "out" and m.fqn.endswith(".weight") and m.axis == 0)


def prune_with_torch_pruning(model: nn.Module, x, result: structprune.CompressResult) -> nn.Module:
    """Apply structprune's kept indices to a copy of `model` through Torch-Pruning's dependency graph."""
    tp_model = copy.deepcopy(model).eval()
    dg = tp.DependencyGraph().build_dependency(tp_model, example_inputs=x, verbose=False)
    modules = dict(tp_model.named_modules())
    for group in result.graph.prunable:
        gone = dropped(group, result.plan.keep[group.id])
        if gone.size == 0:
            continue
        member = anchor(group)
        module = modules[member.fqn.rsplit(".", 1)[0]]
        idxs = np.flatnonzero(np.isin(member.positions, gone)).tolist()
        fn = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
        dg.get_pruning_group(module, fn, idxs=idxs).prune()
    return tp_model


CASES = [(name, crit, glob) for name in ("mlp", "cnn", "vgg", "resnet20", "mobilenet_v2", "densenet", "convnext")
         for crit, glob in (("l2", False), ("random", True))]


@pytest.mark.parametrize(("name", "criterion", "global_pruning"), CASES)
def test_torch_pruning_with_our_indices_builds_the_same_model(name: str, criterion: str,
                                                             global_pruning: bool) -> None:
    net = models_zoo.create(name).eval()
    x = models_zoo.example_inputs(name)
    result = structprune.compress(net, x, ratio=0.4, criterion=criterion, global_pruning=global_pruning, seed=3)
    assert result.plan.pruned_groups(), "nothing was pruned: the comparison would be vacuous"

    theirs = prune_with_torch_pruning(net, x, result)

    ours = result.model
    torch.testing.assert_close(outputs(theirs, x), outputs(ours, x), rtol=0, atol=1e-5)
    assert sum(p.numel() for p in theirs.parameters()) == sum(p.numel() for p in ours.parameters())
    assert sum(p.numel() for p in ours.parameters()) == result.report.params_after
    theirs_state, ours_state = theirs.state_dict(), ours.state_dict()
    assert theirs_state.keys() == ours_state.keys()
    for key, tensor in ours_state.items():
        assert torch.equal(tensor, theirs_state[key]), key


def test_torch_pruning_agrees_on_the_macs_we_report() -> None:
    net = models_zoo.create("resnet20").eval()
    x = models_zoo.example_inputs("resnet20")
    result = structprune.compress(net, x, ratio=0.5)
    macs_dense, params_dense = tp.utils.count_ops_and_params(net, x)
    macs_pruned, params_pruned = tp.utils.count_ops_and_params(result.model, x)
    assert (params_dense, params_pruned) == (result.report.params_before, result.report.params_after)
    # Torch-Pruning counts one sample and also BN/pool ops; conv and linear MACs dominate: within 3%.
    assert result.report.macs_before / x.shape[0] == pytest.approx(macs_dense, rel=0.03)
    assert result.report.macs_after / x.shape[0] == pytest.approx(macs_pruned, rel=0.03)
    ratio_tp = macs_pruned / macs_dense
    ratio_ours = result.report.macs_after / result.report.macs_before
    assert ratio_ours == pytest.approx(ratio_tp, rel=0.03)


def attention_rows(group: ChannelGroup):
    return next((m for m in group.members if m.fqn.endswith("attn.qkv.weight") and m.axis == 0), None)


@pytest.mark.parametrize("attention", ["heads", "head_dims"])
def test_torch_pruning_with_our_attention_indices_builds_the_same_vit(attention: str) -> None:
    """Only the ViT's attention groups are pruned (whole heads or per-head dims); Torch-Pruning removes
    the same qkv rows through its dependency graph and its head attributes are refreshed by hand."""
    net, x = models_zoo.create("vit").eval(), models_zoo.example_inputs("vit")
    graph = structprune.analyze(net, x, attention=attention)
    full = structprune.select(net, x, graph, ratio=0.5, criterion="random", seed=1)
    heads = [g for g in graph.prunable if attention_rows(g) is not None]
    keep = {g: (k if g in {h.id for h in heads} else tuple(range(full.sizes[g]))) for g, k in full.keep.items()}
    plan = structprune.Plan(keep, full.sizes, full.meta)
    ours = structprune.apply_plan(net, x, plan, graph=graph)

    theirs = copy.deepcopy(net)
    dg = tp.DependencyGraph().build_dependency(theirs, example_inputs=x, verbose=False)
    modules = dict(theirs.named_modules())
    for group in heads:
        rows = attention_rows(group)
        idxs = np.flatnonzero(np.isin(rows.positions, dropped(group, plan.keep[group.id]))).tolist()
        dg.get_pruning_group(modules[rows.fqn[: -len(".weight")]], tp.prune_linear_out_channels, idxs=idxs).prune()
    for attn in (m for m in theirs.modules() if hasattr(m, "qkv")):
        width = attn.qkv.out_features // 3
        attn.num_heads, attn.head_dim = ((attn.num_heads, width // attn.num_heads) if attention == "head_dims"
                                         else (width // attn.head_dim, attn.head_dim))

    shape = [(a.num_heads, a.head_dim) for a in ours.modules() if hasattr(a, "qkv")]
    assert shape == ([(4, 4)] * 2 if attention == "head_dims" else [(2, 8)] * 2)
    assert shape == [(a.num_heads, a.head_dim) for a in theirs.modules() if hasattr(a, "qkv")]
    torch.testing.assert_close(outputs(theirs, x), outputs(ours, x), rtol=0, atol=1e-6)
    assert {k: v.shape for k, v in theirs.state_dict().items()} == {k: v.shape for k, v in ours.state_dict().items()}
