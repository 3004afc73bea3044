"""No bare exception leaves compress: a failure inside a stage becomes that stage's typed error,
saying what was being done, with the original exception chained."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import structprune
from structprune.errors import AnalysisError, PlanError, StructpruneError
from structprune.rules import DEFAULT_RULES


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()


def _broken_rule(ctx, node) -> None:
    raise IndexError("list index out of range")


class BrokenCriterion:
    name = "broken"

    def score(self, views, ctx):
        raise ZeroDivisionError("division by zero")


def test_a_rule_that_raises_becomes_an_analysis_error_naming_the_op_and_node() -> None:
    rules = DEFAULT_RULES | {"aten.relu": _broken_rule}
    with pytest.raises(AnalysisError, match=r"^\[analyze\] rule for aten.relu failed on node %relu .*: "
                                            r"list index out of range"):
        structprune.compress(_net(), torch.randn(2, 4), rules=rules)


def test_a_criterion_that_raises_becomes_a_plan_error_naming_it() -> None:
    with pytest.raises(PlanError, match=r"scoring the groups with criterion 'broken' failed: ZeroDivisionError"):
        structprune.compress(_net(), torch.randn(2, 4), criterion=BrokenCriterion())


def test_structprune_errors_pass_through_unchanged() -> None:
    with pytest.raises(StructpruneError, match=r"^\[select\] ratio") as caught:
        structprune.compress(_net(), torch.randn(2, 4), ratio=1.5)
    assert caught.value.__cause__ is None
