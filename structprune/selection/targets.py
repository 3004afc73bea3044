"""Budget targets: prune until the model keeps a given fraction of its MACs or parameters.

`target_macs=0.5` means "keep half the MACs" (2x fewer), whatever channel ratio that takes. The search
ranks channels as global pruning does (`select_plan(global_pruning=True)`: each group's scores divided by
their mean, lowest first, at most `max_group_ratio` of a group and never its last channel) and bisects on
how far down that ranking to cut, a global threshold on the normalised scores, until the pruned model's
figure is within `tolerance` (2%, relative to the target) of the target. Each candidate plan is costed
on the ChannelGraph (`PlanCost`), without rewriting the model. Where one more channel crosses the whole
tolerance band (a small model's wide groups), the cut stops above the band and later channels of the
ranking are added one at a time, skipping those that would undershoot. `allocation="uniform"` bisects
on one ratio shared by every group instead (`target_search` holds the search).

Verification may keep groups whole afterwards, which moves the achieved figure: `meet_target` then
searches again with those groups fixed (at most MAX_TARGET_ROUNDS rewrites). A target that cannot be met
is a PlanError naming the closest figure the model can reach, never a silent pass.
"""
from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from structprune.errors import PlanError
from structprune.selection.plan import Plan
from structprune.selection.plan_cost import PlanCost
from structprune.selection.select import is_ignored, output_fqns
from structprune.selection.target_search import KINDS, TargetSearch

TARGET_TOLERANCE = 0.02  # relative to the target: 0.5 is met by 0.49 .. 0.51
MAX_TARGET_ROUNDS = 3  # rewrites (each verified) before a target missed because of verification is final
ALLOCATIONS = ("global", "uniform")
Result = TypeVar("Result")


@dataclass(frozen=True)
class Target:
    """Keep `fraction` of the dense model's `kind` ("macs" or "params"), allocated "global" or "uniform".

    >>> Target("macs", 0.5).met(0.495), Target("macs", 0.5).met(0.48)
    (True, False)
    """

    kind: str
    fraction: float
    allocation: str = "global"
    tolerance: float = TARGET_TOLERANCE

    @property
    def option(self) -> str:
        return f"target_{self.kind}"

    def met(self, achieved: float) -> bool:
        return abs(achieved - self.fraction) <= self.tolerance * self.fraction + 1e-12

    def achieved(self, report) -> float:
        """The fraction a Report's pruned model keeps (after / before, of this target's kind)."""
        before, after = ((report.macs_before, report.macs_after) if self.kind == "macs"
                         else (report.params_before, report.params_after))
        return after / before if before else 1.0

    def section(self, achieved: float, rounds: int = 1) -> dict:
        """The report's `target` section."""
        return {"kind": self.kind, "requested": self.fraction, "achieved": round(achieved, 4),
                "tolerance": self.tolerance, "within_tolerance": self.met(achieved),
                "allocation": self.allocation, "rounds": rounds}


def check_target_options(ratio_given: bool, target_macs: Any, target_params: Any, allocation: Any) -> Target | None:
    """The Target that `compress`'s options ask for (None: prune by ratio); PlanError, naming the option,
    for a value outside (0, 1), both targets, a target beside an explicit ratio, or a stray allocation.

    >>> check_target_options(False, 0.5, None, None)
    Target(kind='macs', fraction=0.5, allocation='global', tolerance=0.02)
    """
    given = {name: value for name, value in (("target_macs", target_macs), ("target_params", target_params))
             if value is not None}
    for name, value in given.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
            raise PlanError(f"{name} must be a fraction in (0, 1) (keep this share of the dense model), got {value!r}")
    if len(given) > 1:
        raise PlanError("target_macs and target_params are mutually exclusive: pass one budget")
    if allocation is not None and allocation not in ALLOCATIONS:
        raise PlanError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    if not given:
        if allocation is not None:
            raise PlanError("allocation applies only with target_macs or target_params")
        return None
    (name, value), = given.items()
    if ratio_given:
        raise PlanError(f"ratio and {name} are mutually exclusive: {name} chooses the ratio; pass one of them")
    return Target(name.removeprefix("target_"), float(value), allocation or "global")


def plan_for_target(graph, scores: Mapping[str, np.ndarray], config, *, keep_whole: Mapping[str, str] | None = None,
                    meta: Mapping | None = None, cost: PlanCost | None = None) -> Plan:
    """The plan whose pruned model keeps `config.target`'s fraction of MACs or params (within its
    tolerance), from the criterion's `scores` per prunable group. `config` supplies target, round_to,
    ignore and max_group_ratio (a CompressConfig). `keep_whole`: group id -> reason, groups to leave
    whole (verification failed them); recorded as `meta.blocked_by_verification`. PlanError when the
    target cannot be met, with the closest figure this model reaches.

    >>> import torch
    >>> from torch import nn
    >>> from structprune.api import CompressConfig, analyze
    >>> graph = analyze(nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2)), torch.randn(1, 16))
    >>> plan = plan_for_target(graph, {"0.weight:0": np.arange(64.0)}, CompressConfig(target_params=0.5))
    >>> len(plan.keep["0.weight:0"]), plan.meta["target"]["estimated"]  # 610 of 1218 parameters
    (32, 0.5008)
    """
    target: Target = config.target
    ignore = (config.ignore,) if isinstance(config.ignore, str) else tuple(config.ignore)
    whole = dict(keep_whole or {})
    active = [g for g in graph.groups if g.prunable and g.id not in whole and not is_ignored(output_fqns(g), ignore)]
    search = TargetSearch(graph, active, scores, target, config.round_to, cost or PlanCost(graph), len(whole))
    removed, ratio = (search.global_cut(config.max_group_ratio) if target.allocation == "global"
                      else search.uniform_cut())
    keep = {g.id: tuple(range(g.size)) for g in graph.groups}
    keep.update(search.kept(removed))
    info = {"ratio": round(ratio, 6), "global": target.allocation == "global", "round_to": config.round_to,
            "ignore": list(ignore), "ignored_groups": [g.id for g in graph.groups if g.prunable and g not in active
                                                       and g.id not in whole],
            "target": {"kind": target.kind, "fraction": target.fraction, "allocation": target.allocation,
                       "estimated": round(search.fraction(removed), 4)}}
    plan = Plan(keep, {g.id: g.size for g in graph.groups}, {**info, **(meta or {})})
    return plan.keeping_whole(whole) if whole else plan


def meet_target(target: Target, choose: Callable[[Mapping[str, str]], Plan], rewrite: Callable[[Plan], Result], *,
                rounds: int = MAX_TARGET_ROUNDS) -> tuple[Result, dict]:
    """Plan for `target`, rewrite and verify, and measure: `choose(keep_whole)` plans with those groups
    whole (`plan_for_target`), `rewrite(plan)` returns a verified result with `.plan` and `.report`
    (`verified_rewrite`). When verification kept groups whole and the figure misses the target, plan
    again with them fixed, at most `rounds` rewrites. Returns the result and the report's `target`
    section; PlanError when the target is still missed."""
    whole: dict[str, str] = {}
    for attempt in range(1, rounds + 1):
        result = rewrite(choose(whole))
        achieved = target.achieved(result.report)
        if target.met(achieved):
            return result, target.section(achieved, attempt)
        blocked = dict(result.plan.meta.get("blocked_by_verification", {}))
        if set(blocked) <= set(whole):
            break
        whole.update(blocked)
    raise PlanError(f"{target.option}={target.fraction:g} was not met: the verified model keeps {achieved:.4f} of "
                    f"its {KINDS[target.kind]} after {attempt} rewrites ({len(blocked)} groups kept whole because "
                    f"their rewrite failed verification); the closest verified figure is {achieved:.4f}")
