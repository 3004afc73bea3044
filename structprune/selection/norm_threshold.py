"""Threshold pruning on raw coupled norms: the selection that follows group-lasso training.

After group-lasso training (`structprune.recover.group_lasso`) a channel's coupled norm (criterion
`group_norm`) is on one scale in every group, so one threshold T over all prunable channels decides:
channels with norm < T go. Unlike global pruning (`select_plan(global_pruning=True)`), the norms are not
divided by their group's mean; a group whose channels the penalty drove to zero loses them all but one.

- `plan_below_threshold`: an explicit T (as in Ding et al.'s analysis of pruning + fine-tuning, which prunes
  the columns whose l2 norm is below a threshold): exactly the channels below T go, except that a group
  always keeps its strongest channel (a group cannot be emptied; the plan's meta counts these).
- `plan_for_norm_budget`: T chosen by a budget: a ratio (that share of all active channels, lowest norm
  first) or a MACs/params target (bisected on the same ranking, costed on the graph by `TargetSearch`);
  capped at `max_group_ratio` of a group, never its last channel. `meta["threshold"]` is the largest
  norm removed.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import numpy as np

from structprune.errors import PlanError
from structprune.selection.plan import Plan
from structprune.selection.plan_cost import PlanCost
from structprune.selection.select import check_ratio, is_ignored, output_fqns
from structprune.selection.target_search import TargetSearch
from structprune.selection.targets import Target, active_groups, cut_plan

SELECTION = "group_norm_threshold"


def active_prunable(graph, ignore=(), keep_whole: Mapping[str, str] | None = None) -> list:
    """The groups a threshold may prune: prunable, not ignored (module globs), not kept whole."""
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    whole = keep_whole or {}
    return [g for g in graph.groups if g.prunable and g.id not in whole and not is_ignored(output_fqns(g), ignore)]


def plan_below_threshold(graph, norms: Mapping[str, np.ndarray], threshold: float, *, ignore=(),
                         meta: Mapping | None = None) -> Plan:
    """Keep every channel of the active groups whose norm is >= `threshold` (and each group's strongest).

    >>> import torch
    >>> from torch import nn
    >>> from structprune.api import analyze
    >>> graph = analyze(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(1, 4))
    >>> plan = plan_below_threshold(graph, {"0.weight:0": np.array([0.5, 0.01, 2.0, 0.02])}, 0.1)
    >>> plan.keep["0.weight:0"], plan.meta["below_threshold"]
    ((0, 2), 2)
    """
    if not (isinstance(threshold, (int, float)) and 0 < threshold < math.inf):
        raise PlanError(f"the group-norm threshold must be a positive number, got {threshold!r}")
    keep = {g.id: tuple(range(g.size)) for g in graph.groups}
    below = forced = 0
    for group in active_prunable(graph, ignore):
        values = np.asarray(norms[group.id], dtype=np.float64)
        kept = np.flatnonzero(values >= threshold)
        below += group.size - kept.size
        if kept.size == 0:
            kept, forced = np.array([int(np.argmax(values))]), forced + 1
        keep[group.id] = tuple(kept.tolist())
    info = {"selection": SELECTION, "threshold": float(threshold), "below_threshold": below,
            "kept_below_threshold": forced, "ignore": list(ignore if not isinstance(ignore, str) else [ignore])}
    return Plan(keep, {g.id: g.size for g in graph.groups}, {**info, **(meta or {})})


def norm_ranking(active: list, norms: Mapping[str, np.ndarray], cap: float) -> list[str]:
    """The group of each channel in removal order: raw norm ascending over all active groups (ties by
    group order, then channel), at most `cap` of a group and never its last channel."""
    entries = sorted((float(v), i, c) for i, g in enumerate(active) for c, v in enumerate(np.asarray(norms[g.id])))
    limit = [min(int(math.floor(g.size * cap)), g.size - 1) for g in active]
    taken, ranking = [0] * len(active), []
    for _, i, _ in entries:
        if taken[i] < limit[i]:
            taken[i] += 1
            ranking.append(active[i].id)
    return ranking


def plan_for_norm_budget(graph, norms: Mapping[str, np.ndarray], config, *,
                         keep_whole: Mapping[str, str] | None = None, meta: Mapping | None = None) -> Plan:
    """The threshold that meets `config`'s budget (a CompressConfig: its ratio, or target_macs /
    target_params with global allocation), and its plan; PlanError for a latency target or another
    allocation, or a target the model cannot reach."""
    target = config.target
    if target is not None and (not isinstance(target, Target) or target.allocation != "global"):
        raise PlanError("threshold pruning of group norms takes a ratio, target_macs or target_params with global "
                        "allocation; drop target_latency_ms / allocation")
    if config.group_ratios:
        raise PlanError("threshold pruning of group norms removes channels below one threshold over all groups; "
                        "drop group_ratios (--group-ratio)")
    whole = dict(keep_whole or {})
    active = active_groups(graph, config, whole)
    ranking = norm_ranking(active, norms, config.max_group_ratio)
    budget = target or Target("macs", 0.5)  # TargetSearch's costing; a ratio only reads its ranking
    search = TargetSearch(graph, active, norms, budget, config.round_to, PlanCost(graph), len(whole))
    if target is None:
        removed = dict(Counter(ranking[:int(sum(g.size for g in active) * check_ratio(config.ratio))]))
        ratio = sum(removed.values()) / max(sum(g.size for g in active), 1)
    else:
        removed, ratio = search.global_cut(config.max_group_ratio, ranking)
    info = {"selection": SELECTION, "threshold": _largest_removed(active, norms, search, removed),
            **({"target": {"kind": target.kind, "fraction": target.fraction, "allocation": "global",
                           "estimated": round(search.fraction(removed), 4)}} if target else {})}
    return cut_plan(graph, config, search, removed, ratio, whole, {**info, **(meta or {})})


def _largest_removed(active: list, norms: Mapping[str, np.ndarray], search: TargetSearch,
                     removed: Mapping[str, int]) -> float:
    """The largest norm among the removed channels (0.0 when none is removed)."""
    kept = search.kept(removed)
    dropped = [np.delete(np.asarray(norms[g.id], dtype=np.float64), kept[g.id]) for g in active]
    return max((float(d.max()) for d in dropped if d.size), default=0.0)
