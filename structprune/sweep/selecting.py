"""MACs targets for criteria that choose their own channels (i-SpaSP, coreset).

compress's target search sets each group's keep count from the scores; a selecting criterion then picks
the channels, and coreset also moves counts between groups by its parameter budget, so the pruned model's
MACs miss the target (on a digits ResNet-20, coreset keeps 0.73-0.79 of the MACs when asked for 0.667, and
compress reports the target as not met). `plan_to_target` searches the target to ask for until the
criterion's final plan, costed on the channel graph, keeps the wanted fraction within 2%; the scores (and
coreset's sensitivities) are computed once for all tries.
"""
from __future__ import annotations

import math

from structprune.api import analyze, select
from structprune.criteria import get_criterion
from structprune.errors import PlanError
from structprune.selection import Plan, PlanCost

TRIES = 10
TOLERANCE = 0.02  # as compress's targets
FALLBACK_TOLERANCE = 0.10


class Memoised:
    """A criterion whose scores, and coreset's sensitivities, are computed once and reused by every
    select() call of one search (same model, data and seed)."""

    def __init__(self, name: str) -> None:
        self.criterion = get_criterion(name)
        self.name = self.criterion.name
        self.needs_data = bool(getattr(self.criterion, "needs_data", False))
        self.needs_labels = bool(getattr(self.criterion, "needs_labels", False))
        self._memo: dict = {}

    def score(self, groups, ctx):
        if "scores" not in self._memo:
            self._memo["scores"] = self.criterion.score(groups, ctx)
        return self._memo["scores"]

    def select(self, groups, ctx, keep_counts):
        if not callable(getattr(self.criterion, "sensitivities", None)):
            return self.criterion.select(groups, ctx, keep_counts)
        key = tuple(g.group_id for g in groups)
        if key not in self._memo:
            self._memo[key] = self.criterion.sensitivities(groups, ctx)
        return self.criterion.select(groups, ctx, keep_counts, sensitivities=self._memo[key])


def plan_to_target(model, example_inputs, criterion: str, fraction: float, data, seed: int = 0,
                   round_to: int = 1) -> Plan:
    """The plan of selecting `criterion` that keeps `fraction` of the dense MACs within 2%: the request is
    scaled by wanted / achieved, and bisected (geometrically) once the wanted fraction is bracketed. Where
    the criterion's counts move in steps that jump over the 2% band, the closest plan within 10% is taken
    (the row's theoretical_speedup shows what was reached); PlanError beyond that."""
    graph = analyze(model, example_inputs)
    cost, memo = PlanCost(graph), Memoised(criterion)
    request, below, above, tried = fraction, 0.0, 1.0, []
    for _ in range(TRIES):
        plan = select(model, example_inputs, graph, target_macs=request, criterion=memo, seed=seed, data=data,
                      round_to=round_to)
        achieved = cost.of_plan(plan)[0] / cost.dense[0]
        tried.append((abs(achieved - fraction) / fraction, achieved, plan))
        if tried[-1][0] <= TOLERANCE:
            return plan
        below, above = (request, above) if achieved < fraction else (below, request)
        step = request * fraction / achieved
        request = step if below < step < above else math.sqrt(max(below, 1e-3) * above)
    miss, achieved, plan = min(tried, key=lambda t: t[0])
    if miss <= FALLBACK_TOLERANCE:
        return plan
    raise PlanError(f"criterion '{criterion}' keeps {achieved:.4f} of the MACs at best, not {fraction:.4f} "
                    f"(within 10%) in {TRIES} tries; sweep a narrower range")
