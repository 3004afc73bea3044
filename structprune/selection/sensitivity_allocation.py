"""Allocation by sensitivity (in the spirit of NetAdapt and FastNAS): how deep to cut each group, read from a
table of what the model loses when that group alone is pruned at a few ratios (`structprune.sensitivity`
measures it).

Notation: a group of n channels measured at ratios r_1 < ... < r_m lost d_j (baseline accuracy or output
fidelity minus the value, `SensitivityTable.drops`) with c_j = removed_at(n, r_j) channels removed (select.py).
Its loss after removing k channels, D(k), is the piecewise-linear curve through (0, 0) and the (c_j, d_j),
made non-decreasing (a running maximum); a measurement that failed counts as an infinite loss. The
allocation removes the measured channels (k <= c_m) of all groups in order of D(k), ties by depth k / n,
then by the groups' order: cutting that ranking at any point is the same as a threshold t on the loss,
each group pruned as deep as D(k) <= t allows. The table says nothing past c_m, so those channels come
after every measured one, in order of D continued with its last slope (at least 1e-6 per channel). The budget (a
ratio of all prunable channels, or a MACs / params / latency target) chooses where to cut. Within a group,
the criterion's scores choose which channels go, as they did when the table was measured.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from structprune.errors import PlanError
from structprune.selection.channel_multiple import unit_multiple
from structprune.selection.plan import Plan
from structprune.selection.select import _rounded, check_ratio, is_ignored, output_fqns, removed_at

MIN_SLOPE = 1e-6  # loss per channel past the deepest measured ratio, so deeper cuts always rank later
METRICS = ("accuracy", "fidelity")


@dataclass(frozen=True)
class SensitivityTable:
    """The value of `metric` ("accuracy" in percent, or "fidelity": mean cosine of the outputs with the
    dense model's) when each group alone loses each ratio of its channels; `baseline` is the dense
    model's value, `values[i][j]` group i at ratio j (NaN where that model failed to run).

    >>> table = SensitivityTable("fidelity", 1.0, (0.5,), ("a", "b"), (4, 4), ((0.9,), (1.0,)))
    >>> table.drops().tolist()
    [[0.09999999999999998], [0.0]]
    """

    metric: str
    baseline: float
    ratios: tuple[float, ...]
    groups: tuple[str, ...]
    sizes: tuple[int, ...]
    values: tuple[tuple[float, ...], ...]

    def drops(self) -> np.ndarray:
        """Baseline minus value, groups x ratios (NaN stays NaN)."""
        return self.baseline - np.asarray(self.values, dtype=np.float64).reshape(len(self.groups), len(self.ratios))

    def removed(self, size: int) -> list[int]:
        """Channels a group of `size` loses at each ratio (as the measurement removed them)."""
        return [removed_at(size, r) for r in self.ratios]

    def rows(self) -> list[dict[str, Any]]:
        """One row per group and ratio: group, size, ratio, removed, metric, value, drop (CSV order)."""
        drops = self.drops()
        return [{"group": g, "size": n, "ratio": r, "removed": c, "metric": self.metric,
                 "value": float(self.values[i][j]), "drop": float(drops[i, j])}
                for i, (g, n) in enumerate(zip(self.groups, self.sizes))
                for j, (r, c) in enumerate(zip(self.ratios, self.removed(n)))]


def loss_curve(table: SensitivityTable, group_id: str, size: int) -> np.ndarray:
    """D(k) for k = 1 .. size - 1 (module docstring) of one group, read from `table`."""
    if group_id not in table.groups:
        raise PlanError(f"the sensitivity table has no row for group '{group_id}': measure it on this model "
                        "(structprune sensitivity MODEL --data ...) with the same analysis options")
    drops = np.nan_to_num(table.drops()[table.groups.index(group_id)], nan=math.inf)
    points = {0: 0.0}
    for c, d in zip(table.removed(size), drops.tolist()):
        points[c] = max(points.get(c, -math.inf), d)
    xs = np.array(sorted(points), dtype=np.float64)
    ys = np.maximum.accumulate(np.array([points[int(x)] for x in xs]))
    k = np.arange(1, size, dtype=np.float64)
    curve = np.interp(k, xs, ys)
    slope = max((ys[-1] - ys[-2]) / (xs[-1] - xs[-2]), MIN_SLOPE) if len(xs) > 1 else MIN_SLOPE
    return np.where(k > xs[-1], ys[-1] + (k - xs[-1]) * slope, curve)


def sensitivity_ranking(table: SensitivityTable, groups: Sequence, cap: float) -> list[str]:
    """The group of each channel, in the order the allocation removes them (at most `cap` of a group and
    never its last channel): measured depths before unmeasured ones, then lowest D(k), ties by depth, then
    by the groups' order. Here both groups were measured at 2 of 4 channels removed:

    >>> from types import SimpleNamespace as G
    >>> t = SensitivityTable("fidelity", 1.0, (0.5,), ("a", "b"), (4, 4), ((0.6,), (0.99,)))
    >>> sensitivity_ranking(t, [G(id="a", size=4), G(id="b", size=4)], 0.9)
    ['b', 'b', 'a', 'a', 'b', 'a']
    """
    entries = []
    for order, g in enumerate(groups):
        limit = min(int(math.floor(g.size * cap)), g.size - 1)
        curve, measured = loss_curve(table, g.id, g.size), max(table.removed(g.size), default=0)
        entries += [(k + 1 > measured, float(curve[k]), (k + 1) / g.size, order, g.id) for k in range(limit)]
    return [gid for *_, gid in sorted(entries, key=lambda e: e[:4])]


def plan_by_sensitivity(groups: Iterable, scores: Mapping[str, np.ndarray], table: SensitivityTable, *, ratio: float,
                        round_to: int = 1, ignore: Iterable[str] = (), max_group_ratio: float = 0.9,
                        meta: Mapping | None = None) -> Plan:
    """Remove `ratio` of all prunable channels, taken in sensitivity order (`sensitivity_ranking`), each
    group keeping its highest-scored channels.

    >>> from types import SimpleNamespace as G
    >>> t = SensitivityTable("fidelity", 1.0, (0.25, 0.75), ("a", "b"), (4, 4), ((0.9, 0.6), (1.0, 0.99)))
    >>> groups = [G(id="a", size=4, prunable=True, members=()), G(id="b", size=4, prunable=True, members=())]
    >>> plan = plan_by_sensitivity(groups, {"a": np.arange(4.0), "b": np.arange(4.0)}, t, ratio=0.5)
    >>> plan.keep["a"], plan.keep["b"]
    ((1, 2, 3), (3,))
    """
    ratio = check_ratio(ratio)
    groups = list(groups)
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    active = [g for g in groups if g.prunable and not is_ignored(output_fqns(g), ignore)]
    ranking = sensitivity_ranking(table, active, max_group_ratio)
    removed: dict[str, int] = {}
    for gid in ranking[:int(sum(g.size for g in active) * ratio)]:
        removed[gid] = removed.get(gid, 0) + 1
    keep = {g.id: tuple(range(g.size)) for g in groups}
    for g in active:
        n_keep = _rounded(g.size - removed.get(g.id, 0), g.size, unit_multiple(g, round_to))
        keep[g.id] = tuple(sorted(np.argsort(-np.asarray(scores[g.id]), kind="stable")[:n_keep].tolist()))
    info = {"ratio": ratio, "global": False, "allocation": "sensitivity", "round_to": round_to,
            "ignore": list(ignore), "ignored_groups": [g.id for g in groups if g.prunable and g not in active]}
    return Plan(keep, {g.id: g.size for g in groups}, {**info, **(meta or {})})
