"""Every zoo model x ratios x uniform/global: compress verifies, shrinks params and MACs, keeps the
output shape, the classes and the state_dict keys, and never touches the caller's model."""
from __future__ import annotations

import pytest
import torch

import models_zoo
import structprune
from helpers import assert_state_equal, outputs, snapshot_state

ZOO = models_zoo.list_models()


@pytest.mark.parametrize("global_pruning", [False, True], ids=["uniform", "global"])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_prunes_verified_and_smaller(name: str, ratio: float, global_pruning: bool) -> None:
    net = models_zoo.create(name)  # training mode, as a user's model usually is
    x = models_zoo.example_inputs(name)
    before = snapshot_state(net)
    dense_out = outputs(net, x)

    result = structprune.compress(net, x, ratio=ratio, global_pruning=global_pruning)

    report = result.report
    assert report.verification["ok"], report.verification
    assert report.params_after < report.params_before
    assert report.macs_after < report.macs_before
    assert report.params_before == sum(p.numel() for p in net.parameters())
    assert report.params_after == sum(p.numel() for p in result.model.parameters())
    pruned_out = outputs(result.model, x)
    assert pruned_out.shape == dense_out.shape == (2, models_zoo.spec(name).num_classes)
    assert torch.isfinite(pruned_out).all()
    # the caller's model is untouched: same tensors, same mode
    assert net.training
    assert_state_equal(net.state_dict(), before)
    # the pruned model keeps classes, parameter names and mode
    assert type(result.model) is type(net) and result.model is not net
    assert result.model.state_dict().keys() == net.state_dict().keys()
    assert result.model.training
    assert report.plan_meta["ratio"] == ratio and report.plan_meta["global"] is global_pruning
    if report.verification["exact_groups"]:
        assert report.verification["masking_error"] <= 1e-4


@pytest.mark.parametrize("name", ZOO)
def test_zoo_uniform_plan_removes_the_ratio_of_every_prunable_group(name: str) -> None:
    net = models_zoo.create(name).eval()
    x = models_zoo.example_inputs(name)
    graph = structprune.analyze(net, x)
    plan = structprune.select(net, x, graph, ratio=0.5)
    for group in graph.groups:
        kept = len(plan.keep[group.id])
        expected = group.size - min(group.size // 2, group.size - 1) if group.prunable else group.size
        assert kept == expected, group.id
