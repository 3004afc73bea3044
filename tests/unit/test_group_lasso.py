"""Group-lasso sparsity training and threshold pruning (structprune.group_lasso, recover.group_lasso,
criteria 'group_norm', selection.norm_threshold): the penalty by hand on a residual add, its gradient on
whole coupled channels, exact threshold selection, budgets, determinism, the report section."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import structprune
from structprune.compress_config import CompressConfig
from structprune.criteria import CRITERIA
from structprune.criteria.group_norm import GroupNorm
from structprune.criteria.views import group_views
from structprune.errors import PlanError
from structprune.group_lasso import group_lasso_compress, prune_sparse, sparsify
from structprune.recover import RecoveryConfig
from structprune.recover.group_lasso import GroupLassoConfig, GroupLassoPenalty
from structprune.selection.norm_threshold import plan_below_threshold, plan_for_norm_budget
from structprune.selection.plan_cost import PlanCost

EPS = 0.25
QUIET = RecoveryConfig(progress=False, measure_dead_rate=False, lr=0.05)


class ResidualAdd(nn.Module):
    """x -> a(x) + b(x) -> BatchNorm -> ReLU -> c: the add ties a's and b's output channels, the norm's
    entries and c's input columns into one group of 3 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(2, 3, 1), nn.Conv2d(2, 3, 1)
        self.bn, self.c = nn.BatchNorm2d(3), nn.Conv2d(3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.bn(self.a(x) + self.b(x)))).mean(dim=(2, 3))


def residual_model(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    net = ResidualAdd()
    with torch.no_grad():
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
        net.bn.running_mean.fill_(3.0)  # a buffer: must not count
    return net.eval(), torch.randn(2, 2, 4, 4)


def hand_squares(net: ResidualAdd) -> list[float]:
    """s_c written out: both producers' rows and biases, the norm's scale and bias, c's input column."""
    with torch.no_grad():
        return [float(net.a.weight[ch].square().sum() + net.a.bias[ch] ** 2 + net.b.weight[ch].square().sum()
                      + net.b.bias[ch] ** 2 + net.bn.weight[ch] ** 2 + net.bn.bias[ch] ** 2
                      + net.c.weight[:, ch].square().sum()) for ch in range(3)]


def the_group(net, x):
    graph = structprune.analyze(net, x)
    assert len(graph.prunable) == 1 and graph.prunable[0].size == 3
    return graph, graph.prunable[0]


def test_penalty_equals_a_hand_computation_with_both_producers_of_the_add_in_one_norm() -> None:
    net, x = residual_model()
    graph, group = the_group(net, x)
    assert {"a.weight", "a.bias", "b.weight", "b.bias", "bn.weight", "bn.bias", "c.weight"} <= set(group.member_fqns())
    penalty = GroupLassoPenalty.of(graph, net, eps=EPS)
    expected = sum(math.sqrt(EPS + s) for s in hand_squares(net))
    assert penalty(net).item() == pytest.approx(expected, rel=1e-6)
    assert penalty.norms(net)[group.id] == pytest.approx([math.sqrt(EPS + s) for s in hand_squares(net)], rel=1e-6)


def test_group_norm_criterion_scores_the_same_coupled_norm_and_is_registered() -> None:
    net, x = residual_model()
    graph, group = the_group(net, x)
    scores = GroupNorm(eps=EPS).score(group_views(graph, net), None)[group.id]
    assert scores == pytest.approx(GroupLassoPenalty.of(graph, net, eps=EPS).norms(net)[group.id], rel=1e-6)
    assert CRITERIA["group_norm"].needs_data is False


def slice_norms(net: ResidualAdd, ch: int) -> np.ndarray:
    """The norm of each member slice of channel `ch`."""
    slices = [net.a.weight[ch], net.a.bias[ch], net.b.weight[ch], net.b.bias[ch], net.bn.weight[ch], net.bn.bias[ch],
              net.c.weight[:, ch]]
    return np.array([float(s.detach().norm()) for s in slices])


def test_penalty_gradient_shrinks_whole_coupled_channels_and_zeroes_the_weakest() -> None:
    net, x = residual_model()
    graph, group = the_group(net, x)
    with torch.no_grad():  # channel 1 weak in every member
        for t in (net.a.weight[1], net.a.bias[1:2], net.b.weight[1], net.b.bias[1:2], net.bn.weight[1:2],
                  net.bn.bias[1:2], net.c.weight[:, 1]):
            t.mul_(0.1)
    penalty = GroupLassoPenalty.of(graph, net, eps=1e-8)
    before, slices_before = penalty.norms(net)[group.id], slice_norms(net, 0)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    for _ in range(40):  # no data term: lambda * P alone, lambda = 1
        optimizer.zero_grad()
        penalty(net).backward()
        optimizer.step()
    after = penalty.norms(net)[group.id]
    assert after[1] < 0.02 < before[1] and after[1] < 0.05 * after[[0, 2]].min()
    assert (slice_norms(net, 1) < 0.02).all()  # every member slice of the weak channel, both producers included
    shrink = slice_norms(net, 0) / slices_before  # a strong channel: every slice by the same factor
    assert shrink == pytest.approx(np.full(7, after[0] / before[0]), rel=1e-4)


def two_group_graph():
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))
    graph = structprune.analyze(net, torch.randn(1, 4))
    assert [g.id for g in graph.prunable] == ["0.weight:0", "2.weight:0"]
    return net, graph


def test_threshold_selection_keeps_exactly_the_channels_at_or_above_it() -> None:
    _, graph = two_group_graph()
    norms = {"0.weight:0": np.array([0.3, 1e-4, 0.2, 0.05, 2.0, 0.1]), "2.weight:0": np.array([1e-3, 0.02, 0.09,
                                                                                                 0.08, 0.01])}
    plan = plan_below_threshold(graph, norms, 0.1)
    assert plan.keep["0.weight:0"] == (0, 2, 4, 5)
    assert plan.keep["2.weight:0"] == (2,)  # every channel below: the strongest stays, counted in the meta
    assert (plan.meta["below_threshold"], plan.meta["kept_below_threshold"]) == (2 + 5, 1)
    assert plan.keep["4.weight:0"] == (0, 1)  # blocked (the output) stays whole
    with pytest.raises(PlanError, match="positive number"):
        plan_below_threshold(graph, norms, 0.0)


def test_a_budget_picks_one_raw_threshold_over_all_groups_and_meets_the_target() -> None:
    _, graph = two_group_graph()
    norms = {"0.weight:0": np.array([5.0, 0.1, 4.0, 0.2, 6.0, 3.0]), "2.weight:0": np.array([0.3, 2.0, 0.15, 2.5,
                                                                                              0.4])}
    lowest_three = {"0.weight:0": (0, 2, 4, 5), "2.weight:0": (0, 1, 3, 4)}  # norms 0.1, 0.2 and 0.15 out
    cost = PlanCost(graph)
    fraction = cost.of_counts({g: np.array(k) for g, k in lowest_three.items()})[1] / cost.dense[1]
    plan = plan_for_norm_budget(graph, norms, CompressConfig(target_params=round(fraction, 4)))
    assert {g: plan.keep[g] for g in norms} == lowest_three
    assert cost.of_plan(plan)[1] / cost.dense[1] == pytest.approx(fraction, rel=0.02)
    removed = [v for g in norms for c, v in enumerate(norms[g]) if c not in plan.keep[g]]
    kept = [v for g in norms for c, v in enumerate(norms[g]) if c in plan.keep[g]]
    assert max(removed) < min(kept) and plan.meta["threshold"] == max(removed)
    ratio_plan = plan_for_norm_budget(graph, norms, CompressConfig(ratio=0.5, max_group_ratio=1.0))
    assert sorted(len(k) for g, k in ratio_plan.keep.items() if g in norms) == [2, 4]  # 5 lowest of 11 removed
    with pytest.raises(PlanError, match="target_latency_ms"):
        plan_for_norm_budget(graph, norms, CompressConfig(target_latency_ms=1.0))


def separable_data(seed: int = 0) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 4, generator=generator)
    y = (x[:, 0] > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=generator)


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))


def test_sparsity_training_records_each_epoch_and_is_deterministic_for_a_seed() -> None:
    net, x = mlp(), torch.randn(2, 4)
    config = GroupLassoConfig(epochs=3, lam=0.05)
    runs = [sparsify(net, x, separable_data(), separable_data(1), config, training=QUIET) for _ in range(2)]
    first, second = runs
    assert [e.epoch for e in first.history] == [1, 2, 3]
    assert first.history[-1].penalty < first.penalty_before  # the penalty pulls the norms down
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(),
                                                 second.model.state_dict().values()))
    assert [e.penalty for e in first.history] == [e.penalty for e in second.history]
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), mlp().state_dict().values()))  # untouched
    plans = [prune_sparse(run, x, target_params=0.5).plan for run in runs]
    assert plans[0] == plans[1]


def test_explicit_threshold_prunes_exactly_the_channels_below_it_and_reports_the_section() -> None:
    net, x = mlp(), torch.randn(2, 4)
    sparse = sparsify(net, x, separable_data(), separable_data(1), GroupLassoConfig(epochs=2, lam=0.05),
                      training=QUIET)
    norms = sparse.norms
    threshold = float(np.median(np.concatenate(list(norms.values()))))
    sparse = type(sparse)(**{**sparse.__dict__, "config": GroupLassoConfig(2, 0.05, threshold=threshold)})
    result = prune_sparse(sparse, x)
    for gid, values in norms.items():
        assert result.plan.keep[gid] == tuple(np.flatnonzero(values >= threshold).tolist())
    section = result.report.extra["sparsity"]
    assert (section["epochs"], section["lambda"], section["threshold"], section["threshold_source"]) == (
        2, 0.05, threshold, "explicit")
    share = float((np.concatenate(list(norms.values())) < threshold).mean())
    assert section["below_threshold_share"] == pytest.approx(share, abs=1e-6)
    assert [set(e) >= {"penalty", "weighted_penalty", "val_accuracy", "below_threshold_share"}
            for e in section["history"]] == [True, True]
    with pytest.raises(PlanError, match="threshold"):
        prune_sparse(sparse, x, target_macs=0.5)


def test_group_lasso_compress_meets_a_budget_and_recovers() -> None:
    net, x = mlp(), torch.randn(2, 4)
    result = group_lasso_compress(net, x, separable_data(), separable_data(1), GroupLassoConfig(epochs=1, lam=0.01),
                                  training=QUIET, recovery=RecoveryConfig(method="finetune", epochs=1, progress=False,
                                                                          measure_dead_rate=False),
                                  target_params=0.5)
    assert result.report.verification["ok"] and result.report.extra["target"]["within_tolerance"]
    assert result.report.extra["recovery"]["epochs"] == 1
    assert result.report.extra["sparsity"]["threshold_source"] == "budget"
    assert 0.0 < result.report.extra["sparsity"]["below_threshold_share"] < 1.0


@pytest.mark.parametrize("kwargs, message", [
    ({"epochs": 0, "lam": 1e-3}, "epochs must be a positive integer"),
    ({"epochs": 1, "lam": 0.0}, "lambda must be a positive number"),
    ({"epochs": 1, "lam": float("nan")}, "lambda must be a positive number"),
    ({"epochs": 1, "lam": 1e-3, "threshold": -1.0}, "threshold must be a positive number"),
])
def test_config_refuses_bad_values_in_one_line(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        GroupLassoConfig(**kwargs)
