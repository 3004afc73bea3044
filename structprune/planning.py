"""Scores -> Plan for every kind of budget: `structprune.select` scores the groups once (`score_groups`) and
hands them to the planner of its config's target kind (PLANNERS; None is a plain ratio), then lets a
criterion that chooses channels itself (i-SpaSP, coreset) pick them at the planner's counts.

`allocation="sensitivity"` needs a SensitivityTable: the config's, or one measured here on `data` by output
fidelity (`with_sensitivity`; compress measures it once, before its planning rounds). `allocation="coreset"`
needs the coreset criterion's empirical sensitivities on `data` (`with_sensitivity` measures them into a
`CoresetBound`, in the same field). With a budget target the target search sets every group's count, so a
criterion that would re-spread counts by its own budget (coreset's `allocate`) only picks the channels.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from torch import nn

from structprune.compress_config import CompressConfig
from structprune.criteria import Coreset, ScoringContext, get_criterion
from structprune.criteria.views import group_views
from structprune.errors import PlanError, stage_errors
from structprune.latency_target import plan_for_latency
from structprune.selection import Plan, plan_by_sensitivity, plan_for_target, select_plan
from structprune.selection.coreset_allocation import CoresetBound
from structprune.sensitivity import measure_sensitivity


@dataclass(frozen=True, eq=False)
class Scored:
    """A model's groups scored by a criterion: what every planner starts from."""

    model: nn.Module
    example_inputs: Any
    criterion: Any
    views: list
    context: ScoringContext
    scores: Mapping[str, np.ndarray]


def score_groups(model: nn.Module, example_inputs: Any, graph, config: CompressConfig, data: Any = None) -> Scored:
    """Score the prunable groups of `graph` with the config's criterion (seeded; `data` for a data-driven one).

    >>> import torch, structprune
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> x = torch.randn(2, 4)
    >>> score_groups(net, x, structprune.analyze(net, x), CompressConfig()).scores["0.weight:0"].shape
    (8,)
    """
    crit = get_criterion(config.criterion)
    if getattr(crit, "needs_data", False) and data is None:
        raise PlanError(f"criterion '{crit.name}' is data-driven: pass data=... (a DataLoader, or --data SPEC)")
    ctx = ScoringContext(model, example_inputs, data, config.seed)
    with stage_errors(PlanError, f"scoring the groups with criterion '{crit.name}'"):
        views = group_views(graph, model)
        return Scored(model, example_inputs, crit, views, ctx, crit.score(views, ctx))


def with_sensitivity(model: nn.Module, example_inputs: Any, graph, config: CompressConfig, data: Any,
                     scored: Scored | None = None) -> CompressConfig:
    """`config` with a SensitivityTable when its allocation is "sensitivity" and it has none: measured on
    `data` by output fidelity (a smooth signal, and calibration data need no labels); PlanError without data.
    For "coreset", a CoresetBound (`coreset_bound`)."""
    if config.allocation == "coreset" and config.sensitivity is None:
        return config.with_options(sensitivity=coreset_bound(model, example_inputs, graph, config, data))
    if config.allocation != "sensitivity" or config.sensitivity is not None:
        return config
    if data is None:
        raise PlanError("allocation 'sensitivity' measures each group's sensitivity on data: pass data=... (on the "
                        "command line --data SPEC), or sensitivity=<SensitivityTable>")
    scored = scored or score_groups(model, example_inputs, graph, config, data)
    with stage_errors(PlanError, "measuring each group's sensitivity"):
        table = measure_sensitivity(model, example_inputs, graph, scored.scores, data, metric="fidelity",
                                    ignore=config.ignore, shrink_rules=config.shrink_rules)
    return config.with_options(sensitivity=table)


def coreset_bound(model: nn.Module, example_inputs: Any, graph, config: CompressConfig, data: Any) -> CoresetBound:
    """The coreset criterion's empirical sensitivities of the prunable groups on `data`, as the allocation reads
    them (the config's criterion's constants when it is a Coreset); PlanError without data."""
    if data is None:
        raise PlanError("allocation 'coreset' spreads the budget by the coreset bound of each group's empirical "
                        "sensitivities: pass data=... (on the command line --data SPEC)")
    crit = get_criterion(config.criterion)
    crit = crit if isinstance(crit, Coreset) else Coreset()
    with stage_errors(PlanError, "measuring the coreset sensitivities"):
        views = [v for v in group_views(graph, model) if v.group_id in {g.id for g in graph.groups if g.prunable}]
        sens, eta = crit.sensitivities(views, ScoringContext(model, example_inputs, data, config.seed))
    return CoresetBound(sens, eta, crit.k_const, crit.delta)


def plan_groups(scored: Scored, graph, config: CompressConfig, *, keep_whole: Mapping[str, str] | None = None) -> Plan:
    """The plan of the config's budget (ratio or target) from `scored`, with the criterion's own selection."""
    meta = {"criterion": scored.criterion.name, "seed": config.seed, "attention": graph.attention}
    kind = config.target.kind if config.target is not None else None
    plan = PLANNERS[kind](scored, graph, config, keep_whole or {}, meta)
    if callable(getattr(scored.criterion, "select", None)):
        criterion = scored.criterion
        if kind is not None and getattr(criterion, "allocate", False):  # the target search set the counts
            criterion = replace(criterion, allocate=False)
        plan = _criterion_selection(scored, plan, criterion)
    return plan


def _by_ratio(scored: Scored, graph, config: CompressConfig, keep_whole, meta) -> Plan:
    if config.allocation == "sensitivity":
        return plan_by_sensitivity(graph.groups, scored.scores, config.sensitivity, ratio=config.ratio,
                                   round_to=config.round_to, ignore=config.ignore,
                                   max_group_ratio=config.max_group_ratio, meta=meta)
    return select_plan(graph.groups, scored.scores, ratio=config.ratio, global_pruning=config.global_pruning,
                       round_to=config.round_to, ignore=config.ignore, max_group_ratio=config.max_group_ratio,
                       meta=meta, group_ratios=config.group_ratios,
                       comparable_scores=bool(getattr(scored.criterion, "comparable_scores", False)))


def _by_fraction(scored: Scored, graph, config: CompressConfig, keep_whole, meta) -> Plan:
    return plan_for_target(graph, scored.scores, config, keep_whole=keep_whole, meta=meta,
                           sensitivity=config.sensitivity)


def _by_latency(scored: Scored, graph, config: CompressConfig, keep_whole, meta) -> Plan:
    return plan_for_latency(scored.model, scored.example_inputs, graph, scored.scores, config, keep_whole=keep_whole,
                            meta=meta, sensitivity=config.sensitivity)


PLANNERS: dict[str | None, Callable[..., Plan]] = {None: _by_ratio, "macs": _by_fraction, "params": _by_fraction,
                                                   "latency_ms": _by_latency}


def _criterion_selection(scored: Scored, plan: Plan, criterion: Any) -> Plan:
    """Criteria that are not a top-k (i-SpaSP, coreset) choose the kept channels themselves, given the
    planner's keep count per group (ignored and blocked groups stay whole)."""
    active = [v for v in scored.views if v.group_id in plan.pruned_groups()]
    counts = {v.group_id: len(plan.keep[v.group_id]) for v in active}
    selection = criterion.select(active, scored.context, counts) if active else None
    if selection is None:
        return plan
    keep = {**dict(plan.keep), **{g: tuple(sorted(k)) for g, k in selection.keep.items()}}
    return Plan(keep, plan.sizes, {**dict(plan.meta), **dict(selection.meta)})
