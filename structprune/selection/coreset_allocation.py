"""Allocation by the coreset bound (`allocation="coreset"`): how deep to cut each group, read from the
sample-complexity bound of provable filter pruning (Liebenwein et al., ICLR 2020; `criteria.budget`), so that a
MACs, parameter or latency target is met by the target search instead of coreset's own parameter budget.

Notation (criteria.budget): a group of n channels with empirical sensitivities s (S = sum s, p = s / S) and
eta output units needs m(eps) = ceil(C (6 + 2 eps) / eps^2) draws, C = K S log(8 eta / delta), and keeps
kept(eps) = round(E[distinct channels in m draws]) = round(sum_c 1 - (1 - p_c)^m), at least 1. One global
eps sets every group's count; a larger eps keeps fewer. The allocation's j-th removal from a group (kept
going from n - j + 1 to n - j) happens at the smallest eps whose kept(eps) <= n - j: with M_j the most draws
whose expectation stays below n - j + 1/2, eps_j = (C + sqrt(C^2 + 6 C M_j)) / M_j. Ordering all removals by
eps_j (ties by depth j / n, then by the groups' order) makes cutting the ranking at any point the same as one
global eps: the target search bisects on where to cut (`TargetSearch.global_cut`, or the latency ladder).
Expectations are read off a log-spaced grid of m (GRID points), so eps_j is exact to the grid's resolution.
Groups without sensitivities (no consumer the criterion can tap, or all zero) come last, shallowest first.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

GRID = 2048  # log-spaced draw counts from 1 to MAX_DRAWS at which the expectation is evaluated
MAX_DRAWS = 1e15


@dataclass(frozen=True, eq=False)
class CoresetBound:
    """Per-group empirical sensitivities `sens` and output units `eta` (`Coreset.sensitivities`), with the
    bound's constants K (`k_const`) and `delta`; `ranking` orders the channel removals by the eps that
    makes them (module docstring).

    >>> bound = CoresetBound({"a": np.ones(4), "b": np.array([8.0, 1.0, 0.5, 0.5])}, {"a": 4, "b": 4})
    >>> from types import SimpleNamespace as G
    >>> bound.ranking([G(id="a", size=4), G(id="b", size=4)], 0.9)
    ['b', 'a', 'b', 'a', 'a', 'b']
    """

    sens: Mapping[str, np.ndarray]
    eta: Mapping[str, int]
    k_const: float = 3.0
    delta: float = 1e-16

    def ranking(self, groups: Sequence, cap: float) -> list[str]:
        """The group of each removed channel in the allocation's order, at most `cap` of a group and never its
        last channel."""
        entries = []
        for order, g in enumerate(groups):
            limit = min(int(math.floor(g.size * cap)), g.size - 1)
            thresholds = self.thresholds(g.id, g.size)
            entries += [(float(thresholds[j]), (j + 1) / g.size, order, g.id) for j in range(limit)]
        return [gid for *_, gid in sorted(entries, key=lambda e: e[:3])]

    def thresholds(self, group_id: str, size: int) -> np.ndarray:
        """eps_j for j = 1 .. size - 1 (inf where the group has no sensitivities)."""
        s = np.asarray(self.sens.get(group_id, np.zeros(0)), dtype=np.float64)
        if s.size != size or not np.isfinite(s).all() or s.sum() <= 0:
            return np.full(size - 1, math.inf)
        p = s / s.sum()
        draws = np.geomspace(1.0, MAX_DRAWS, GRID)
        expected = (1.0 - np.power.outer(1.0 - p, draws)).sum(axis=0)  # non-decreasing in draws
        wanted = size - np.arange(1, size) + 0.5  # stay below: kept rounds to size - j or less
        log_m = np.interp(wanted, expected, np.log(draws), right=math.inf)
        most = np.where(wanted > expected[-1], math.inf, np.exp(log_m))
        c = self.k_const * s.sum() * math.log(8 * max(int(self.eta.get(group_id, 1)), 1) / self.delta)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(np.isinf(most), 0.0, (c + np.sqrt(c * c + 6 * c * most)) / most)
