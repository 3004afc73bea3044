"""Budget targets (issue 14): `target_macs` / `target_params` plan until the pruned model keeps that share of
the dense model's MACs or parameters, within 2%. Checked by counting the rewritten model, not the search's
own estimate; the estimate (`PlanCost`) is checked against the rewritten model separately."""
from __future__ import annotations

import copy
import pickle
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import models_zoo
import structprune
from helpers import LiteralFlattenLeNet
from structprune.cli import main
from structprune.compress_config import CompressConfig
from structprune.criteria import ScoringContext, get_criterion
from structprune.criteria.views import group_views
from structprune.data.running import eval_outputs
from structprune.errors import PlanError
from structprune.graph.cost import MacCounter, count_macs, count_params, macs_of
from structprune.rewrite import rewrite_model
from structprune.selection import Plan, PlanCost, Target, meet_target, plan_for_target, select_plan
from structprune.verified import verified_rewrite

ZOO = ("resnet20", "mobilenet_v2", "vit")
_CACHE: dict[str, tuple] = {}


def zoo(name: str):
    """(model, example, graph, l2 scores) of a zoo model with seeded weights, analysed once per session."""
    if name not in _CACHE:
        torch.manual_seed(0)
        model, x = models_zoo.create(name).eval(), models_zoo.example_inputs(name)
        graph = structprune.analyze(model, x)
        scores = get_criterion("l2").score(group_views(graph, model), ScoringContext(model, x, None, 0))
        _CACHE[name] = (model, x, graph, scores)
    return _CACHE[name]


def forward_macs(model: nn.Module, x) -> int:
    """MACs counted on a forward of the model (graph.cost's rules, no capture)."""
    with MacCounter() as counter:
        eval_outputs(model, x)
    return counter.total


def achieved(model: nn.Module, x, plan: Plan, graph, kind: str) -> float:
    """The share of MACs or params the rewritten model keeps, counted on it."""
    pruned = rewrite_model(model, graph, plan)
    if kind == "macs":
        return forward_macs(pruned, x) / forward_macs(model, x)
    return count_params(pruned) / count_params(model)


# ---- the cost estimate ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ZOO)
def test_plan_cost_is_the_rewritten_models_count(name: str) -> None:
    model, x, graph, scores = zoo(name)
    cost = PlanCost(graph)
    assert cost.dense == (macs_of(graph.captured), count_params(model))
    for ratio, glob in ((0.5, False), (0.3, True)):
        plan = select_plan(graph.groups, scores, ratio=ratio, global_pruning=glob)
        pruned = rewrite_model(model, graph, plan)
        assert cost.of_plan(plan) == (count_macs(pruned, x), count_params(pruned))


# ---- targets met on the rewritten model ---------------------------------------------------------------

@pytest.mark.parametrize("name", ZOO)
@pytest.mark.parametrize("kind, fraction", [("macs", 0.5), ("params", 0.3)])
def test_target_is_met_within_two_percent(name: str, kind: str, fraction: float) -> None:
    model, x, graph, scores = zoo(name)
    plan = plan_for_target(graph, scores, CompressConfig(**{f"target_{kind}": fraction}))
    got = achieved(model, x, plan, graph, kind)
    assert abs(got - fraction) <= 0.02 * fraction
    assert plan.meta["target"] == {"kind": kind, "fraction": fraction, "allocation": "global",
                                   "estimated": pytest.approx(got, abs=1e-4)}


def test_uniform_allocation_gives_every_group_one_ratio_up_to_a_channel() -> None:
    model, x, graph, scores = zoo("mobilenet_v2")
    plan = plan_for_target(graph, scores, CompressConfig(target_macs=0.5, allocation="uniform"))
    assert abs(achieved(model, x, plan, graph, "macs") - 0.5) <= 0.01
    ratio = plan.meta["ratio"]
    for g in graph.prunable:
        removed = g.size - len(plan.keep[g.id])
        assert min(int(g.size * ratio + 1e-6), g.size - 1) <= removed <= int(g.size * ratio + 1e-6) + 1
    assert plan.meta["global"] is False and plan.meta["target"]["allocation"] == "uniform"


def test_the_global_cut_is_global_pruning_at_the_ratio_it_found() -> None:
    """Without the one-channel fill (a wide tolerance), a target plan is select_plan's global plan."""
    model, x, graph, scores = zoo("resnet20")
    config = SimpleNamespace(target=Target("macs", 0.5, tolerance=0.2), round_to=1, ignore=(), max_group_ratio=0.9)
    plan = plan_for_target(graph, scores, config)
    removed = sum(g.size - len(plan.keep[g.id]) for g in graph.prunable)
    channels = sum(g.size for g in graph.prunable)
    same = select_plan(graph.groups, scores, ratio=(removed + 0.5) / channels, global_pruning=True)
    assert dict(plan.keep) == dict(same.keep)


def test_round_to_and_ignore_hold_under_a_target() -> None:
    model, x, graph, scores = zoo("resnet20")
    plan = plan_for_target(graph, scores, CompressConfig(target_params=0.3, round_to=4, ignore=("stages.0*",)))
    assert abs(achieved(model, x, plan, graph, "params") - 0.3) <= 0.006
    for g in graph.prunable:
        kept = len(plan.keep[g.id])
        assert kept == g.size or kept % 4 == 0
    assert plan.meta["ignored_groups"] and all(len(plan.keep[g]) == graph.group(g).size
                                               for g in plan.meta["ignored_groups"])


def test_same_scores_same_plan() -> None:
    model, x, graph, scores = zoo("vit")
    config = CompressConfig(target_params=0.3)
    again = structprune.analyze(model, x)
    assert plan_for_target(graph, scores, config).to_json() == plan_for_target(again, scores, config).to_json()


# ---- targets that cannot be met ----------------------------------------------------------------------

def test_an_unreachable_target_names_the_best_achievable_figure() -> None:
    model, x, graph, scores = zoo("resnet20")
    with pytest.raises(PlanError, match=r"target_macs=0.001 cannot be met") as caught:
        plan_for_target(graph, scores, CompressConfig(target_macs=0.001))
    best = float(re.search(r"the best achievable is ([0-9.]+)", str(caught.value)).group(1))
    most = select_plan(graph.groups, scores, ratio=0.999999, global_pruning=True)  # every group to its cap
    assert best == pytest.approx(achieved(model, x, most, graph, "macs"), abs=1e-4)


def _lenet_target(**options):
    """meet_target as compress runs it: plan, verified rewrite, plan again around what verification blocked."""
    torch.manual_seed(0)
    model, x = LiteralFlattenLeNet().eval(), torch.randn(2, 1, 32, 32)
    graph = structprune.analyze(model, x)
    scores = get_criterion("l2").score(group_views(graph, model), ScoringContext(model, x, None, 0))
    config = CompressConfig(**options)
    result, section = meet_target(config.target, lambda whole: plan_for_target(graph, scores, config, keep_whole=whole),
                                  lambda plan: verified_rewrite(model, x, plan, graph, config))
    return model, x, result, section


def test_groups_verification_keeps_whole_are_fixed_and_the_rest_planned_again() -> None:
    model, x, result, section = _lenet_target(target_params=0.3)
    assert list(result.plan.meta["blocked_by_verification"]) == ["conv2.weight:0"]
    assert len(result.plan.keep["conv2.weight:0"]) == 16
    got = count_params(result.model) / count_params(model)
    assert abs(got - 0.3) <= 0.006 and result.report.verification["ok"]
    assert section == {"kind": "params", "requested": 0.3, "achieved": round(got, 4), "tolerance": 0.02,
                       "within_tolerance": True, "allocation": "global", "rounds": 2}


def test_a_target_blocked_groups_put_out_of_reach_is_an_error_with_the_best_figure() -> None:
    with pytest.raises(PlanError, match=r"target_params=0.05 cannot be met: .*1 more kept whole because their "
                                        r"rewrite failed verification.* the best achievable is 0\.\d{4}"):
        _lenet_target(target_params=0.05)


# ---- options -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"ratio": 0.5, "target_macs": 0.5}, "ratio and target_macs are mutually exclusive"),
    ({"ratio": 0.3, "target_params": 0.3}, "ratio and target_params are mutually exclusive"),
    ({"target_macs": 0.5, "target_params": 0.3}, "target_macs and target_params are mutually exclusive"),
    ({"target_macs": 1.0}, r"target_macs must be a fraction in \(0, 1\)"),
    ({"target_params": 0}, r"target_params must be a fraction in \(0, 1\)"),
    ({"target_macs": True}, r"target_macs must be a fraction in \(0, 1\)"),
    ({"target_macs": "0.5"}, r"target_macs must be a fraction in \(0, 1\)"),
    ({"allocation": "uniform"}, "allocation applies only with target_macs or target_params"),
    ({"target_macs": 0.5, "allocation": "greedy"}, "allocation must be one of global, uniform"),
])
def test_bad_target_options_are_one_line_errors_naming_the_option(options, message) -> None:
    with pytest.raises(PlanError, match=message) as caught:
        CompressConfig(**options)
    assert "\n" not in str(caught.value)


def test_a_target_takes_the_place_of_the_default_ratio() -> None:
    config = CompressConfig(target_macs=0.5)
    assert config.ratio is None and config.target == Target("macs", 0.5)
    assert CompressConfig().with_options(target_params=0.3).target == Target("params", 0.3)
    default = copy.deepcopy(pickle.loads(pickle.dumps(CompressConfig().ratio)))  # as a job hands it on
    assert default == 0.5 and CompressConfig(ratio=default, target_macs=0.4).ratio is None
    assert config.with_options(target_macs=None, ratio=0.3).ratio == 0.3
    with pytest.raises(PlanError, match=r"ratio must be a number in \[0, 1\)"):
        config.with_options(target_macs=None)  # neither a target nor a ratio
    with pytest.raises(PlanError, match="ratio and target_macs are mutually exclusive"):
        config.with_options(ratio=0.3)
    assert CompressConfig(ratio=0.5).ratio == 0.5 and CompressConfig().target is None


@pytest.mark.parametrize("argv, message", [
    (["--target-macs", "1.5"], "--target-macs: '1.5' is not a fraction in (0, 1), e.g. 0.5"),
    (["--target-params", "abc"], "--target-params: 'abc' is not a fraction in (0, 1), e.g. 0.5"),
    (["--ratio", "0.3", "--target-macs", "0.5"], "ratio and target_macs are mutually exclusive"),
    (["--target-macs", "0.5", "--target-params", "0.5"], "target_macs and target_params are mutually exclusive"),
    (["--allocation", "uniform"], "allocation applies only with target_macs or target_params"),
])
def test_cli_budget_flags_refuse_bad_values_with_exit_2(argv, message, capsys) -> None:
    assert main(["compress", "zoo:mlp", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
