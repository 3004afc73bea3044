"""Budget targets: prune until the model keeps a given fraction of its MACs or parameters.

`target_macs=0.5` means "keep half the MACs" (2x fewer), whatever channel ratio that takes. The search
ranks channels as global pruning does (`select_plan(global_pruning=True)`: each group's scores divided by
their mean, lowest first, at most `max_group_ratio` of a group and never its last channel) and bisects on
how far down that ranking to cut, a global threshold on the normalised scores, until the pruned model's
figure is within `tolerance` (2%, relative to the target) of the target. Each candidate plan is costed
on the ChannelGraph (`PlanCost`), without rewriting the model. Where one more channel crosses the whole
tolerance band (a small model's wide groups), the cut stops above the band and later channels of the
ranking are added one at a time, skipping those that would undershoot. `allocation="uniform"` bisects
on one ratio shared by every group instead (`target_search` holds the search); `allocation="sensitivity"` cuts
the ranking of a sensitivity table (`sensitivity_allocation`), `allocation="coreset"` that of the coreset
bound's global epsilon (`coreset_allocation`). A latency target (`LatencyTarget`) is
measured, not costed: `structprune.latency_target` searches it, above the ONNX layer.

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
from structprune.selection.coreset_allocation import CoresetBound
from structprune.selection.plan import Plan
from structprune.selection.plan_cost import PlanCost
from structprune.selection.select import is_ignored, output_fqns
from structprune.selection.sensitivity_allocation import SensitivityTable, sensitivity_ranking
from structprune.selection.target_search import KINDS, TargetSearch

TARGET_TOLERANCE = 0.02  # relative to the target: 0.5 is met by 0.49 .. 0.51
MAX_TARGET_ROUNDS = 3  # rewrites (each verified) before a target missed because of verification is final
ALLOCATIONS = ("global", "uniform", "sensitivity", "coreset")
FRACTION_TARGETS = ("target_macs", "target_params")
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


@dataclass(frozen=True)
class LatencyTarget:
    """Run in at most about `ms` milliseconds (onnxruntime median on this machine), within `tolerance`
    of it; measured on candidate models, so it has no `achieved(report)`.

    >>> LatencyTarget(2.0).met(2.03), LatencyTarget(2.0).met(2.1), LatencyTarget(2.0).option
    (True, False, 'target_latency_ms')
    """

    ms: float
    allocation: str = "global"
    tolerance: float = TARGET_TOLERANCE
    kind: str = "latency_ms"

    @property
    def option(self) -> str:
        return "target_latency_ms"

    def met(self, achieved_ms: float) -> bool:
        return abs(achieved_ms - self.ms) <= self.tolerance * self.ms + 1e-12

    def section(self, achieved_ms: float, rounds: int = 1, **measured: Any) -> dict:
        """The report's `target` section: requested and achieved in milliseconds, plus `measured`
        (dense_ms, probes, runs, note)."""
        return {"kind": self.kind, "requested": self.ms, "achieved": round(achieved_ms, 4),
                "tolerance": self.tolerance, "within_tolerance": self.met(achieved_ms),
                "allocation": self.allocation, "rounds": rounds, **measured}


def check_target_options(ratio_given: bool, target_macs: Any, target_params: Any, allocation: Any,
                         target_latency_ms: Any = None) -> Target | LatencyTarget | None:
    """The target that `compress`'s options ask for (None: prune by ratio); PlanError, naming the option,
    for a fraction outside (0, 1), a latency that is not a positive number of milliseconds, two targets,
    a target beside an explicit ratio, or a stray allocation ("sensitivity" also allocates a ratio).

    >>> check_target_options(False, 0.5, None, None)
    Target(kind='macs', fraction=0.5, allocation='global', tolerance=0.02)
    >>> check_target_options(False, None, None, "sensitivity", 4.0)
    LatencyTarget(ms=4.0, allocation='sensitivity', tolerance=0.02, kind='latency_ms')
    """
    given = {name: value for name, value in (("target_macs", target_macs), ("target_params", target_params),
                                             ("target_latency_ms", target_latency_ms)) if value is not None}
    for name, value in given.items():
        _check_target_value(name, value)
    if len(given) > 1:
        raise PlanError(f"{' and '.join(given)} are mutually exclusive: pass one budget")
    if allocation is not None and allocation not in ALLOCATIONS:
        raise PlanError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {allocation!r}")
    if not given:
        if allocation not in (None, "sensitivity"):
            raise PlanError("allocation applies only with target_macs or target_params or target_latency_ms "
                            "(only 'sensitivity' also allocates a ratio)")
        return None
    (name, value), = given.items()
    if ratio_given:
        raise PlanError(f"ratio and {name} are mutually exclusive: {name} chooses the ratio; pass one of them")
    if name == "target_latency_ms":
        return LatencyTarget(float(value), allocation or "global")
    return Target(name.removeprefix("target_"), float(value), allocation or "global")


def _check_target_value(name: str, value: Any) -> None:
    number = not isinstance(value, bool) and isinstance(value, numbers.Real)
    if name in FRACTION_TARGETS and not (number and 0.0 < float(value) < 1.0):
        raise PlanError(f"{name} must be a fraction in (0, 1) (keep this share of the dense model), got {value!r}")
    if name == "target_latency_ms" and not (number and 0.0 < float(value) < float("inf")):
        raise PlanError(f"target_latency_ms must be a positive number of milliseconds (onnxruntime median on this "
                        f"machine), got {value!r}")


def active_groups(graph, config, whole: Mapping[str, str]) -> list:
    """The groups a budget may prune: prunable, not kept whole, not ignored."""
    ignore = (config.ignore,) if isinstance(config.ignore, str) else tuple(config.ignore)
    return [g for g in graph.groups if g.prunable and g.id not in whole and not is_ignored(output_fqns(g), ignore)]


def plan_for_target(graph, scores: Mapping[str, np.ndarray], config, *, keep_whole: Mapping[str, str] | None = None,
                    meta: Mapping | None = None, cost: PlanCost | None = None,
                    sensitivity: SensitivityTable | None = None) -> Plan:
    """The plan whose pruned model keeps `config.target`'s fraction of MACs or params (within its
    tolerance), from the criterion's `scores` per prunable group. `config` supplies target, round_to,
    ignore and max_group_ratio (a CompressConfig). `keep_whole`: group id -> reason, groups to leave
    whole (verification failed them); recorded as `meta.blocked_by_verification`. `sensitivity`: the table
    that `allocation="sensitivity"` ranks channels by. PlanError when the target cannot be met, with the
    closest figure this model reaches.

    >>> import torch
    >>> from torch import nn
    >>> from structprune.api import CompressConfig, analyze
    >>> graph = analyze(nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 2)), torch.randn(1, 16))
    >>> plan = plan_for_target(graph, {"0.weight:0": np.arange(64.0)}, CompressConfig(target_params=0.5))
    >>> len(plan.keep["0.weight:0"]), plan.meta["target"]["estimated"]  # 610 of 1218 parameters
    (32, 0.5008)
    """
    target: Target = config.target
    whole = dict(keep_whole or {})
    active = active_groups(graph, config, whole)
    search = TargetSearch(graph, active, scores, target, config.round_to, cost or PlanCost(graph), len(whole))
    if target.allocation == "uniform":
        removed, ratio = search.uniform_cut()
    else:
        removed, ratio = search.global_cut(config.max_group_ratio,
                                           allocation_ranking(target.allocation, sensitivity, active, config))
    target_meta = {"kind": target.kind, "fraction": target.fraction, "allocation": target.allocation,
                   "estimated": round(search.fraction(removed), 4)}
    return cut_plan(graph, config, search, removed, ratio, whole, {"target": target_meta, **(meta or {})})


def allocation_ranking(allocation: str, sensitivity: SensitivityTable | CoresetBound | None, active: list,
                       config) -> list[str] | None:
    """The removal order of a ranked allocation: the sensitivity table's or the coreset bound's
    (`coreset_allocation`), or None for global pruning's."""
    if allocation == "coreset":
        if not isinstance(sensitivity, CoresetBound):
            raise PlanError("allocation 'coreset' spreads the budget by the coreset bound of each group's empirical "
                            "sensitivities: pass data=... (a DataLoader; on the command line --data SPEC)")
        return sensitivity.ranking(active, config.max_group_ratio)
    if allocation != "sensitivity":
        return None
    if sensitivity is None:
        raise PlanError("allocation 'sensitivity' needs a sensitivity table: pass data=... (a DataLoader; on the "
                        "command line --data SPEC) so compress can measure it, or sensitivity=<SensitivityTable>")
    return sensitivity_ranking(sensitivity, active, config.max_group_ratio)


def cut_plan(graph, config, search: TargetSearch, removed: Mapping[str, int], ratio: float,
             whole: Mapping[str, str], meta: Mapping) -> Plan:
    """The Plan of one cut of `search`: active groups keep their highest scores, the rest stays whole."""
    ignore = (config.ignore,) if isinstance(config.ignore, str) else tuple(config.ignore)
    allocation = search.target.allocation
    keep = {g.id: tuple(range(g.size)) for g in graph.groups}
    keep.update(search.kept(removed))
    info = {"ratio": round(ratio, 6), "global": allocation == "global", "round_to": config.round_to,
            "ignore": list(ignore), "ignored_groups": [g.id for g in graph.groups if g.prunable
                                                       and g not in search.active and g.id not in whole]}
    if allocation in ("sensitivity", "coreset"):
        info["allocation"] = allocation
    plan = Plan(keep, {g.id: g.size for g in graph.groups}, {**info, **meta})
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
