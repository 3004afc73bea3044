"""Selection: criteria scores -> kept channels. round_to, ratio limits, global pruning with its cap,
ignore globs, and what each criterion prefers (checked against hand-computed scores)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import models_zoo
import structprune
from helpers import group_with
from structprune.criteria import CRITERIA, PerGroupCriterion, get_criterion
from structprune.errors import PlanError
from structprune.selection import is_ignored, select_plan

X4 = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5))


def ladder() -> nn.Sequential:
    """Convs whose prunable groups have sizes 16, 12, 10, 6 and 3."""
    widths = [3, 16, 12, 10, 6, 3, 2]
    layers: list[nn.Module] = []
    for cin, cout in zip(widths[:-1], widths[1:]):
        layers += [nn.Conv2d(cin, cout, 1), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).eval()


def plan_for(model: nn.Module, x=X4, **kw) -> tuple[structprune.Plan, structprune.ChannelGraph]:
    graph = structprune.analyze(model, x)
    return structprune.select(model, x, graph, **kw), graph


def kept_counts(plan, graph) -> dict[str, tuple[int, int]]:
    return {g.id: (g.size, len(plan.keep[g.id])) for g in graph.prunable}


# ---- counts: ratio, round_to, at least one kept, global cap -----------------------------------------

def test_uniform_ratio_removes_the_nearest_count_halves_up_per_group() -> None:
    plan, graph = plan_for(ladder(), ratio=0.5)
    assert kept_counts(plan, graph) == {"0.weight:0": (16, 8), "2.weight:0": (12, 6), "4.weight:0": (10, 5),
                                        "6.weight:0": (6, 3), "8.weight:0": (3, 1)}  # 1.5 of 3 rounds to 2 gone
    assert plan.meta["ratio"] == 0.5 and plan.meta["criterion"] == "l2"
    plan, graph = plan_for(ladder(), ratio=0.3)  # 4.8, 3.6, 3.0, 1.8, 0.9 removed -> 5, 4, 3, 2, 1
    assert kept_counts(plan, graph) == {"0.weight:0": (16, 11), "2.weight:0": (12, 8), "4.weight:0": (10, 7),
                                        "6.weight:0": (6, 4), "8.weight:0": (3, 2)}


@pytest.mark.parametrize("global_pruning", [False, True])
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_round_to_keeps_multiples_where_the_group_is_large_enough(ratio: float, global_pruning: bool) -> None:
    plan, graph = plan_for(ladder(), ratio=ratio, round_to=4, global_pruning=global_pruning)
    for size, kept in kept_counts(plan, graph).values():
        assert 1 <= kept <= size
        if size >= 4 and kept < size:
            assert kept % 4 == 0, (size, kept)
    assert plan.meta["round_to"] == 4


def test_round_to_compresses_end_to_end() -> None:
    # kept counts 8, 6, 5, 3 round *up* to multiples of 4; the 3-channel group is smaller than round_to
    result = structprune.compress(ladder(), X4, ratio=0.5, round_to=4)
    assert [result.model[i].out_channels for i in (0, 2, 4, 6, 8)] == [8, 8, 8, 4, 1]


def test_ratio_zero_prunes_nothing_whatever_round_to() -> None:
    plan, graph = plan_for(ladder(), ratio=0.0, round_to=4)
    assert plan.pruned_groups() == []


def test_ratio_zero_prunes_nothing() -> None:
    result = structprune.compress(ladder(), X4, ratio=0.0)
    assert result.plan.pruned_groups() == []
    assert result.report.params_after == result.report.params_before


@pytest.mark.parametrize("global_pruning", [False, True])
def test_at_least_one_channel_is_always_kept(global_pruning: bool) -> None:
    result = structprune.compress(ladder(), X4, ratio=0.99, global_pruning=global_pruning, max_group_ratio=1.0)
    for size, kept in kept_counts(result.plan, result.graph).values():
        assert kept == 1, size
    assert result.report.verification["ok"]
    assert [result.model[i].out_channels for i in (0, 2, 4, 6, 8)] == [1] * 5


@pytest.mark.parametrize(("ratio", "cap"), [(0.8, 0.5), (0.6, 0.3), (0.9, 0.9)])
def test_global_pruning_respects_max_group_ratio(ratio: float, cap: float) -> None:
    plan, graph = plan_for(ladder(), ratio=ratio, global_pruning=True, max_group_ratio=cap)
    counts = kept_counts(plan, graph)
    for size, kept in counts.values():
        assert size - kept <= int(np.floor(size * cap)), (size, kept)
    total = sum(size for size, _ in counts.values())
    removed = sum(size - kept for size, kept in counts.values())
    assert removed <= int(total * ratio)


def test_global_pruning_reaches_the_target_when_the_cap_allows() -> None:
    plan, graph = plan_for(ladder(), ratio=0.4, global_pruning=True, max_group_ratio=0.9)
    counts = kept_counts(plan, graph)
    total = sum(size for size, _ in counts.values())
    assert sum(size - kept for size, kept in counts.values()) == int(total * 0.4)


def test_global_pruning_prunes_where_normalised_scores_are_lowest() -> None:
    """Group A has a few channels far below its mean, group B is flat: global pruning takes A's."""
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with torch.no_grad():
        for layer in (net[0], net[2], net[4]):
            layer.weight.fill_(1.0)
            layer.bias.zero_()
        net[0].weight[:3] = 0.01  # group A (net[0] rows): channels 0..2 nearly dead
    plan, _ = plan_for(net, torch.randn(2, 4), ratio=3 / 16, global_pruning=True)
    assert plan.keep["0.weight:0"] == (3, 4, 5, 6, 7)
    assert plan.keep["2.weight:0"] == tuple(range(8))


def test_global_cap_holds_with_round_to() -> None:
    plan, graph = plan_for(ladder(), ratio=0.9, global_pruning=True, max_group_ratio=0.5, round_to=4)
    for size, kept in kept_counts(plan, graph).values():
        assert size - kept <= int(np.floor(size * 0.5)), (size, kept)


# ---- ignore globs ---------------------------------------------------------------------------------------

def test_ignore_globs_keep_matching_groups_whole() -> None:
    net = models_zoo.create("resnet20").eval()
    x = models_zoo.example_inputs("resnet20")
    plan, graph = plan_for(net, x, ratio=0.5, ignore=["stages.2.*"])
    ignored = [g for g in graph.prunable if any(m.fqn.startswith("stages.2.") and m.role != "in" for m in g.members)]
    reads_only = [g for g in graph.prunable
                  if g not in ignored and any(f.startswith("stages.2.") for f in g.member_fqns())]
    assert reads_only  # the group stage 2 reads from stage 1 stays prunable
    assert ignored and set(plan.meta["ignored_groups"]) == {g.id for g in ignored}
    for group in graph.prunable:
        whole = plan.keep[group.id] == tuple(range(group.size))
        assert whole == (group in ignored), group.id
    assert plan.meta["ignore"] == ["stages.2.*"]


def test_ignore_a_module_name_protects_its_outputs_not_its_inputs() -> None:
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    result = structprune.compress(net, torch.randn(2, 4), ratio=0.5, ignore=["2"])
    # layer 2 reads the first hidden group and produces the second: only its outputs are kept
    assert result.plan.pruned_groups() == ["0.weight:0"] and result.plan.meta["ignored_groups"] == ["2.weight:0"]
    assert (result.model[0].out_features, result.model[2].out_features) == (4, 8)
    result = structprune.compress(net, torch.randn(2, 4), ratio=0.5, ignore=["4"])
    # ignoring the classifier keeps its classes (an output anyway), not the width of what it reads
    assert result.plan.pruned_groups() == ["0.weight:0", "2.weight:0"] and result.plan.meta["ignored_groups"] == []
    assert (result.model[0].out_features, result.model[2].out_features, result.model[4].in_features) == (4, 4, 4)


def test_is_ignored_glob_semantics() -> None:
    assert is_ignored(["layer4.0.conv1.weight"], ["layer4"])
    assert is_ignored(["layer4.0.conv1.weight"], ["layer4.*.conv1.weight"])
    assert not is_ignored(["layer40.conv.weight"], ["layer4"])
    assert not is_ignored(["fc.weight"], [])


def test_ignore_given_as_one_string_is_one_glob_or_an_error() -> None:
    net = nn.Sequential()
    net.fc1, net.act, net.fc2 = nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)
    try:
        result = structprune.compress(net.eval(), torch.randn(2, 4), ratio=0.5, ignore="fc1")
    except (TypeError, ValueError):
        return
    assert result.plan.keep["fc1.weight:0"] == tuple(range(8))


# ---- criteria ----------------------------------------------------------------------------------------------

def top_k(scores: np.ndarray, k: int) -> tuple[int, ...]:
    return tuple(sorted(np.argsort(-scores, kind="stable")[:k].tolist()))


def two_linear_with_conflicting_magnitudes() -> nn.Sequential:
    """fc1 rows favour channels 0 and 2; fc2 columns are much larger on channels 1 and 3."""
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0] * 4, [0.1] * 4, [0.9] * 4, [0.2] * 4]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[0.0, 3.0, 0.1, 2.5]] * 3))
    return net


@pytest.mark.parametrize("p", [1, 2])
def test_magnitude_criteria_sum_over_every_member_of_the_group(p: int) -> None:
    net = two_linear_with_conflicting_magnitudes()
    plan, _ = plan_for(net, torch.randn(2, 4), ratio=0.5, criterion=f"l{p}")
    w1, b1, w2 = (t.detach() for t in (net[0].weight, net[0].bias, net[2].weight))
    first_layer_only = w1.abs().pow(p).sum(1).numpy()
    whole_group = first_layer_only + b1.abs().pow(p).numpy() + w2.abs().pow(p).sum(0).numpy()
    assert top_k(first_layer_only, 2) == (0, 2)
    assert top_k(whole_group, 2) == (1, 3)
    assert plan.keep["0.weight:0"] == (1, 3)


def test_bn_scale_keeps_the_largest_abs_gamma() -> None:
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1)).eval()
    gamma = torch.tensor([0.1, -2.0, 0.05, 1.0, -0.01, 3.0, 0.5, -0.2])
    with torch.no_grad():
        net[1].weight.copy_(gamma)
        net[0].weight.copy_(torch.linspace(5, 0.1, 8)[:, None, None, None].expand(8, 3, 1, 1))
    bn_plan, _ = plan_for(net, ratio=0.5, criterion="bn_scale")
    l2_plan, _ = plan_for(net, ratio=0.5, criterion="l2")
    assert bn_plan.keep["0.weight:0"] == (1, 3, 5, 6)
    assert l2_plan.keep["0.weight:0"] != bn_plan.keep["0.weight:0"]
    assert bn_plan.meta["criterion"] == "bn_scale"


def test_bn_scale_without_a_norm_falls_back_to_l1() -> None:
    net = two_linear_with_conflicting_magnitudes()
    x = torch.randn(2, 4)
    bn_plan, _ = plan_for(net, x, ratio=0.5, criterion="bn_scale")
    l1_plan, _ = plan_for(net, x, ratio=0.5, criterion="l1")
    assert bn_plan.keep == l1_plan.keep


def test_random_criterion_is_seeded() -> None:
    net = models_zoo.create("vgg").eval()
    x = models_zoo.example_inputs("vgg")
    graph = structprune.analyze(net, x)
    plans = [structprune.select(net, x, graph, ratio=0.5, criterion="random", seed=s) for s in (7, 7, 8)]
    assert plans[0] == plans[1]
    assert plans[0].keep != plans[2].keep
    assert (plans[0].meta["seed"], plans[2].meta["seed"]) == (7, 8)
    first = structprune.compress(net, x, ratio=0.5, criterion="random", seed=7)
    again = structprune.compress(net, x, ratio=0.5, criterion="random", seed=7)
    assert first.plan == again.plan == plans[0]
    for key, value in first.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[key]), key


def test_l2_plan_is_deterministic_without_a_seed() -> None:
    net = models_zoo.create("cnn").eval()
    x = models_zoo.example_inputs("cnn")
    graph = structprune.analyze(net, x)
    assert structprune.select(net, x, graph, seed=1).keep == structprune.select(net, x, graph, seed=2).keep


def test_a_criterion_object_is_accepted_and_its_scores_decide() -> None:
    prefer_high_index = PerGroupCriterion("by_index", lambda g, ctx: np.arange(g.size, dtype=float))
    plan, graph = plan_for(ladder(), ratio=0.5, criterion=prefer_high_index)
    assert plan.keep["0.weight:0"] == tuple(range(8, 16))
    assert plan.meta["criterion"] == "by_index"
    assert get_criterion(prefer_high_index) is prefer_high_index


def test_criteria_registry_and_unknown_name() -> None:
    assert {"bn_scale", "l1", "l2", "random"} <= set(CRITERIA)
    with pytest.raises(ValueError) as info:
        get_criterion("no_such_criterion")
    message = str(info.value)
    assert message.startswith("unknown criterion 'no_such_criterion'; choose one of: ")
    assert message.split(": ", 1)[1].split(", ") == sorted(CRITERIA)


def test_data_driven_criterion_without_data_is_refused() -> None:
    needs_data = PerGroupCriterion("act", lambda g, ctx: np.ones(g.size), needs_data=True)
    with pytest.raises(ValueError, match="criterion 'act' is data-driven: pass data="):
        plan_for(ladder(), criterion=needs_data)


def test_select_plan_validates_round_to() -> None:
    graph = structprune.analyze(ladder(), X4)
    scores = {g.id: np.ones(g.size) for g in graph.prunable}
    for bad in (0, -1, 1.5):
        with pytest.raises(PlanError, match="round_to must be a positive integer"):
            select_plan(graph.groups, scores, ratio=0.5, round_to=bad)


def test_select_keeps_blocked_groups_whole_and_records_sizes() -> None:
    plan, graph = plan_for(ladder(), ratio=0.7)
    for group in graph.blocked:
        assert plan.keep[group.id] == tuple(range(group.size))
    assert dict(plan.sizes) == {g.id: g.size for g in graph.groups}
    assert set(plan.pruned_groups()) == {g.id for g in graph.prunable}
    assert group_with(graph, "10.weight:0").id not in plan.pruned_groups()
