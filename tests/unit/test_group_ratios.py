"""Ratios per glob (`group_ratios`, `--group-ratio GLOB=R[:global]`): each glob's groups lose their own
ratio, uniformly or spread over the pool by the scores; the other groups keep `ratio` (whole when none was
given); a misspelt or shadowed glob, a bad spec and a budget target beside them are errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import structprune
from structprune.compress_config import CompressConfig
from structprune.errors import PlanError
from structprune.selection import GroupRatio, as_group_ratios, select_plan

X = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
WIDTHS = {"0": 8, "2": 8, "4": 12, "6": 4}  # Linear FQN: its output width (the last layer's, 2, is the output)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 12), nn.ReLU(),
                         nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


def kept(plan) -> dict[str, int]:
    return {fqn: len(plan.keep[f"{fqn}.weight:0"]) for fqn in WIDTHS}


def test_each_glob_prunes_its_groups_by_its_ratio_and_the_rest_stay_whole_without_a_ratio() -> None:
    model = mlp()
    result = structprune.compress(model, X, group_ratios={"0": 0.5, "[24]": 0.25})
    assert kept(result.plan) == {"0": 4, "2": 6, "4": 9, "6": 4}
    assert result.report.verification["ok"]
    assert result.plan.meta["group_ratios"] == [
        {"pattern": "0", "ratio": 0.5, "allocation": None, "groups": 1},
        {"pattern": "[24]", "ratio": 0.25, "allocation": None, "groups": 2}]


def test_an_explicit_ratio_prunes_the_groups_no_glob_matches() -> None:
    plan = structprune.compress(mlp(), X, ratio=0.5, group_ratios=["2=0.0", "4=0.75"]).plan
    assert kept(plan) == {"0": 4, "2": 8, "4": 3, "6": 2}


def test_the_first_matching_glob_wins_and_a_shadowed_glob_is_an_error() -> None:
    plan = structprune.compress(mlp(), X, group_ratios=["4=0.5", "[0-9]=0.25"]).plan
    assert kept(plan) == {"0": 6, "2": 6, "4": 6, "6": 3}
    with pytest.raises(PlanError, match=r"glob '4' matches no group left to prune .*taken by an earlier glob"):
        structprune.compress(mlp(), X, group_ratios=["[0-9]=0.25", "4=0.5"])


def test_a_glob_that_matches_nothing_is_an_error_naming_it() -> None:
    with pytest.raises(PlanError, match=r"glob 'encoder\.\*' matches no group left to prune.*structprune inspect"):
        structprune.compress(mlp(), X, group_ratios={"encoder.*": 0.5})
    with pytest.raises(PlanError, match=r"glob '4' matches no group"):  # ignored: nothing left to prune there
        structprune.compress(mlp(), X, group_ratios={"4": 0.5}, ignore=["4"])


def test_a_global_pool_removes_its_share_where_the_scores_are_lowest() -> None:
    graph = structprune.analyze(mlp(), X)
    scores = {g.id: np.full(g.size, 5.0) for g in graph.groups}
    scores["0.weight:0"] = np.arange(1.0, 9.0) * 10.0  # raw: all above group 2's, normalised: mostly below
    scores["2.weight:0"] = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 9.0, 9.0])
    pool = (GroupRatio("[02]", 0.25, "global"),)
    raw = select_plan(graph.groups, scores, ratio=0.0, group_ratios=pool, comparable_scores=True)
    assert kept(raw) == {"0": 8, "2": 4, "4": 12, "6": 4}  # the 4 lowest raw scores are all in group 2
    normalised = select_plan(graph.groups, scores, ratio=0.0, group_ratios=pool)
    assert kept(normalised) == {"0": 7, "2": 5, "4": 12, "6": 4}  # by group mean: 10/45 and three of 1/3 lowest
    uniform = select_plan(graph.groups, scores, ratio=0.0, group_ratios=(GroupRatio("[02]", 0.25),))
    assert kept(uniform) == {"0": 6, "2": 6, "4": 12, "6": 4}
    follows_flag = select_plan(graph.groups, scores, ratio=0.0, group_ratios=(GroupRatio("[02]", 0.25),),
                               global_pruning=True, comparable_scores=True)
    assert kept(follows_flag) == kept(raw)


@pytest.mark.parametrize(("spec", "message"), [
    ("*.fc", r"'\*\.fc' is not GLOB=R\[:uniform\|:global\]"),
    ("=0.5", r"'=0\.5' is not GLOB=R"),
    ("*.fc=half", r"'half' is not a number in \[0, 1\)"),
    ("*.fc=1.0", r"group ratio of '\*\.fc' must be a number in \[0, 1\).*got 1\.0"),
    ("*.fc=0.5:best", r"allocation must be one of uniform, global, got 'best'"),
])
def test_a_bad_spec_is_a_plan_error_naming_it(spec: str, message: str) -> None:
    with pytest.raises(PlanError, match=message):
        CompressConfig(group_ratios=[spec])


def test_specs_mappings_and_objects_give_the_same_ratios_and_a_glob_twice_is_an_error() -> None:
    expected = (GroupRatio("*.fc1", 0.5), GroupRatio("*.qkv", 0.25, "global"))
    assert as_group_ratios({"*.fc1": 0.5, "*.qkv": (0.25, "global")}) == expected
    assert as_group_ratios(["*.fc1=0.5", "*.qkv=0.25:global"]) == expected
    assert as_group_ratios(list(expected)) == expected
    with pytest.raises(PlanError, match=r"glob given twice: \*\.fc1"):
        as_group_ratios(["*.fc1=0.5", "*.fc1=0.25"])
    with pytest.raises(PlanError, match="must be a mapping"):
        as_group_ratios("*.fc1=0.5")


def test_group_ratios_beside_a_budget_target_or_an_allocation_are_refused() -> None:
    with pytest.raises(PlanError, match="group_ratios set ratios per glob: they take a plain ratio"):
        CompressConfig(target_macs=0.5, group_ratios={"0": 0.5})
    with pytest.raises(PlanError, match="group_ratios set ratios per glob"):
        CompressConfig(allocation="sensitivity", group_ratios={"0": 0.5})
    assert CompressConfig(group_ratios={"0": 0.5}).ratio == 0.0
    assert CompressConfig(ratio=0.3, group_ratios={"0": 0.5}).ratio == 0.3
