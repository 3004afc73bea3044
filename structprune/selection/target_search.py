"""The search behind `selection.targets`: candidate plans for one budget target, costed on the channel graph.

Global allocation cuts select_plan's global ranking (scores over their group mean, lowest first, capped per
group) at the point bisection finds; uniform allocation bisects on one ratio over the ratios where some
group's kept count changes. Where one step crosses the whole tolerance band, `fill` adds one channel at a
time from the step's candidates, skipping a group once one more of its channels would undershoot.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from structprune.errors import PlanError
from structprune.selection.channel_multiple import unit_multiple
from structprune.selection.plan_cost import PlanCost
from structprune.selection.select import _rounded, removed_at

KINDS = {"macs": "MACs", "params": "parameters"}
COST_INDEX = {"macs": 0, "params": 1}  # PlanCost.of_keep's order; other kinds (latency) cost by MACs


@dataclass(frozen=True)
class Ladder:
    """Candidate cuts of one allocation from dense (step 0) to the most it may remove (step `steps`):
    `counts(k)` is the channels each active group loses at step k, more at every step."""

    steps: int
    counts: Callable[[int], dict[str, int]]


class TargetSearch:
    """Candidate plans for one target (a `targets.Target`) over the `active` groups, costed on the graph;
    `n_whole`: how many groups verification keeps whole (named in errors)."""

    def __init__(self, graph, active, scores, target, round_to: int, cost: PlanCost, n_whole: int) -> None:
        self.active, self.target, self.round_to, self.cost, self.n_whole = active, target, round_to, cost, n_whole
        self.index = COST_INDEX.get(target.kind, 0)
        self.order = {g.id: np.argsort(-np.asarray(scores[g.id]), kind="stable") for g in active}
        self.norm = {g.id: _normalised(scores[g.id]) for g in active}
        self.multiple = {g.id: unit_multiple(g, round_to) for g in active}  # channel_multiple
        self.ncomp = int(graph.component.max(initial=0)) + 1
        self.seen: dict[frozenset, float] = {}

    def fraction(self, removed: Mapping[str, int]) -> float:
        """The kept share of the target's figure when each active group loses `removed[id]` channels."""
        key = frozenset((g, n) for g, n in removed.items() if n)
        if key not in self.seen:
            keep = np.ones(self.ncomp, dtype=bool)
            for g in self.active:
                keep[g.components[self.order[g.id][self._n_keep(g, removed):]]] = False
            self.seen[key] = self.cost.of_keep(keep)[self.index] / max(self.cost.dense[self.index], 1)
        return self.seen[key]

    def kept(self, removed: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
        """Kept indices per active group: its highest scores (as select_plan keeps them)."""
        return {g.id: tuple(sorted(self.order[g.id][:self._n_keep(g, removed)].tolist())) for g in self.active}

    def _n_keep(self, group, removed: Mapping[str, int]) -> int:
        return _rounded(group.size - removed.get(group.id, 0), group.size, self.multiple[group.id])

    def _met(self, removed: Mapping[str, int]) -> bool:
        return self.target.met(self.fraction(removed))

    def _above(self, removed: Mapping[str, int]) -> bool:
        return self.fraction(removed) >= self.target.fraction

    def _closer(self, a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        return min((a, b), key=lambda r: abs(self.fraction(r) - self.target.fraction))

    # ---- global: a threshold on the normalised scores ----------------------------------------------------
    def global_cut(self, cap: float, ranking: list[str] | None = None) -> tuple[dict[str, int], float]:
        """Removed channels per group, and the share of the active channels that is. `ranking`: the group
        of each channel in removal order (default: global pruning's, `_ranking`; the sensitivity
        allocation passes its own)."""
        ranking = self._ranking(cap) if ranking is None else ranking
        counts = _prefix_counts(ranking)
        lo, hi = 0, len(ranking)  # the cut at lo keeps at least the target, the cut at hi less
        if self._above(counts(hi)):
            return self._reachable(counts(hi)), hi / max(self._channels(), 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._above(counts(mid)) else (lo, mid)
        removed = self._closer(counts(lo), counts(hi))
        removed = removed if self._met(removed) else self.fill(counts(lo), ranking[lo:])
        return removed, sum(removed.values()) / max(self._channels(), 1)

    def _ranking(self, cap: float) -> list[str]:
        """The group of each channel global pruning removes, in its order (select_plan's ranking)."""
        entries = [(v, g.id) for g in self.active for v in self.norm[g.id].tolist()]
        limit = {g.id: min(int(math.floor(g.size * cap)), g.size - 1) for g in self.active}
        pruned = dict.fromkeys(limit, 0)
        ranking = []
        for _, gid in sorted(entries, key=lambda e: e[0]):
            if pruned[gid] < limit[gid]:
                pruned[gid] += 1
                ranking.append(gid)
        return ranking

    # ---- uniform: one ratio for every group -------------------------------------------------------------
    def uniform_cut(self) -> tuple[dict[str, int], float]:
        """Removed channels per group at the one ratio (bisected over the ratios where some group's count
        changes) that meets the target; where one step crosses the band, the groups that step take one
        more channel one by one, lowest next score first. Returns the counts and the ratio."""
        steps, counts = self._uniform_steps(), self._uniform_counts

        if not steps or self._above(counts(steps[-1])):
            return self._reachable(counts(steps[-1] if steps else 0.0)), steps[-1] if steps else 0.0
        lo, hi = -1, len(steps) - 1  # index -1: ratio 0
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self._above(counts(steps[mid])) else (lo, mid)
        base, after = counts(steps[lo] if lo >= 0 else 0.0), counts(steps[hi])
        removed = self._closer(base, after)
        if self._met(removed):
            return removed, steps[lo] if removed is base and lo >= 0 else steps[hi] if removed is after else 0.0
        stepping = sorted((g for g in after if after[g] > base[g]), key=lambda g: self._next_score(g, base))
        return self.fill(base, stepping), steps[lo] if lo >= 0 else 0.0

    def _uniform_steps(self) -> list[float]:
        """The ratios at which some active group's kept count changes."""
        return sorted({(k - 0.5) / g.size for g in self.active for k in range(1, g.size)})

    def _uniform_counts(self, ratio: float) -> dict[str, int]:
        """As select_plan's uniform counts, exact at each step."""
        return {g.id: removed_at(g.size, ratio) for g in self.active}

    # ---- a ladder of cuts, for a measured figure ---------------------------------------------------------
    def ladder(self, allocation: str, cap: float, ranking: list[str] | None = None) -> Ladder:
        """The allocation's cuts as steps: "uniform" climbs its ratios, the others their ranking (global
        pruning's, or `ranking`) one channel at a time."""
        if allocation == "uniform":
            steps = self._uniform_steps()
            return Ladder(len(steps), lambda k: self._uniform_counts(steps[k - 1] if k else 0.0))
        ranking = self._ranking(cap) if ranking is None else ranking
        return Ladder(len(ranking), _prefix_counts(ranking))

    def _next_score(self, gid: str, removed: Mapping[str, int]) -> float:
        """The normalised score of the channel a group loses next."""
        group = next(g for g in self.active if g.id == gid)
        return float(self.norm[gid][self.order[gid][group.size - removed.get(gid, 0) - 1]])

    # ---- shared -------------------------------------------------------------------------------------------
    def fill(self, removed: dict[str, int], candidates: list[str]) -> dict[str, int]:
        """From `removed` (above the band), one more channel of each candidate group in turn, skipping a
        group once one more of its channels would fall below the band, until the target is met."""
        floor, skipped = self.target.fraction * (1 - self.target.tolerance), set()
        for gid in candidates:
            if gid in skipped:
                continue
            trial = {**removed, gid: removed.get(gid, 0) + 1}
            if self.fraction(trial) < floor:
                skipped.add(gid)
                continue
            removed = trial
            if self._met(removed):
                return removed
        above = self.fraction(removed)
        raise PlanError(f"{self.target.option}={self.target.fraction:g} cannot be met within "
                        f"{self.target.tolerance:.0%}: with {self.target.allocation} allocation this model keeps "
                        f"{above:.4f}, or less than {floor:.4f}, of its {KINDS[self.target.kind]}; the closest "
                        f"achievable is {above:.4f}")

    def _reachable(self, removed: dict[str, int]) -> dict[str, int]:
        """`removed`, the most the allocation may remove, if it meets the target; else PlanError."""
        if self._met(removed):
            return removed
        best = self.fraction(removed)
        whole = f", {self.n_whole} more kept whole because their rewrite failed verification" if self.n_whole else ""
        raise PlanError(f"{self.target.option}={self.target.fraction:g} cannot be met: pruning all {len(self.active)} "
                        f"prunable groups as far as allowed ({self.target.allocation} allocation{whole}) still keeps "
                        f"{best:.4f} of this model's {KINDS[self.target.kind]}; the best achievable is {best:.4f} "
                        "(blocked and ignored groups, max_group_ratio and each group's last channel stay)")

    def _channels(self) -> int:
        return sum(g.size for g in self.active)


def _normalised(scores) -> np.ndarray:
    """A group's scores divided by their mean: what global pruning ranks (selection.select._global_counts)."""
    s = np.asarray(scores, dtype=np.float64)
    return s / (s.mean() + 1e-12) if s.size else s


def _prefix_counts(ranking: list[str]) -> Callable[[int], dict[str, int]]:
    """k -> removed channels per group among the ranking's first k."""
    def counts(k: int) -> dict[str, int]:
        return dict(Counter(ranking[:k]))
    return counts
