"""Two readings of a sweep's curves: where pruning + recovery beats Scratch-B, and sparse double descent.

Pruning vs Scratch-B at a point: d = accuracy - accuracy_scratch per seed (the same pruned architecture and
seed, recovered vs trained from scratch); pruning *beats* Scratch-B there when mean(d) - std(d) > 0, *loses*
when mean(d) + std(d) < 0, and is *within noise* otherwise (std: population, over seeds).

Double descent: accuracy as a function of reduction that is non-monotone beyond the seed noise. Order a
curve's points by their mean achieved MACs reduction; point j *rises* when some point i at a lower reduction
has mean_j - mean_i > sqrt(std_i^2 + std_j^2), the combined std of the two points; each rising point is
reported against the i it exceeds most. It is looked for in the accuracy after recovery and in Scratch-B's.
With one seed there is no noise to compare with, so it is not assessed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from structprune.sweep.curves import Curve, CurvePoint, Stat

DESCENT_METRICS = (("accuracy", "after recovery"), ("accuracy_scratch", "Scratch-B"))


@dataclass(frozen=True)
class Rise:
    """Point `point` (MACs reduction `high`) beats the point at reduction `low` on `metric` by `gain`
    accuracy points, more than their combined std `noise`."""

    tool: str
    criterion: str
    metric: str
    point: int
    low: float
    high: float
    gain: float
    noise: float

    def text(self) -> str:
        return f"{self.high:.2f}x above {self.low:.2f}x by {self.gain:.2f} points (noise {self.noise:.2f})"


def rises(curve: Curve, metric: str) -> list[Rise]:
    """The rising points of `curve` on `metric` (see the module), in order of reduction.

    >>> from structprune.sweep.rows import SweepRow
    >>> from structprune.sweep.curves import curves
    >>> rows = [SweepRow("structprune", "l2", s, i, x, 100, int(100 / x), 10, 5, 2.0, x, a + s, a + s, 95.0, 0.0,
    ...                  True, "structprune", 1.0) for s in (0, 1) for i, (x, a) in enumerate([(2, 90), (4, 93)])]
    >>> [r.text() for r in rises(curves(rows)[0], "accuracy")]
    ['4.00x above 2.00x by 3.00 points (noise 0.71)']
    """
    ordered = sorted((p for p in curve.points if _finite(p.macs_reduction) and _finite(getattr(p, metric))),
                     key=lambda p: p.macs_reduction.mean)
    found = []
    for j, high in enumerate(ordered):
        excess = [(_gain(low, high, metric) - _noise(low, high, metric), low) for low in ordered[:j]]
        best = max(excess, key=lambda e: e[0], default=None)
        if best is not None and best[0] > 0:
            low = best[1]
            found.append(Rise(curve.tool, curve.criterion, metric, high.index, low.macs_reduction.mean,
                              high.macs_reduction.mean, _gain(low, high, metric), _noise(low, high, metric)))
    return found


def descent_lines(curves: list[Curve], seeds: int) -> list[str]:
    """One sentence per metric: where accuracy rises with reduction beyond the noise, or 'not observed'."""
    if seeds < 2:
        return ["double descent: not assessed (one seed: no seed noise to compare a rise with)"]
    lines = []
    for metric, label in DESCENT_METRICS:
        measured = [c for c in curves if any(_finite(getattr(p, metric)) for p in c.points)]
        if not measured:
            continue
        found = [f"{c.criterion}: " + "; ".join(r.text() for r in rises(c, metric)) for c in measured
                 if rises(c, metric)]
        lines.append(f"double descent ({label}): " + (" | ".join(found) if found else "not observed"))
    return lines


def scratch_lines(curves: list[Curve]) -> list[str]:
    """Per curve with Scratch-B: at which points pruning + recovery beats, loses to, or ties with Scratch-B."""
    lines = []
    for curve in curves:
        points = [p for p in curve.points if _finite(p.scratch_gain)]
        if not points:
            continue
        by = {verdict: [p for p in points if scratch_verdict(p.scratch_gain) == verdict]
              for verdict in ("beats", "loses to", "is within noise of")}
        parts = [f"{verdict} Scratch-B at " + ", ".join(_at(p) for p in at) for verdict, at in by.items() if at]
        lines.append(f"{curve.criterion}: pruning + recovery " + "; ".join(parts)
                     + " (accuracy - Scratch-B, paired, mean ± std over seeds)")
    return lines


def scratch_verdict(gain: Stat) -> str:
    """'beats', 'loses to' or 'is within noise of' for a paired accuracy difference (see the module)."""
    if gain.mean - gain.std > 0:
        return "beats"
    return "loses to" if gain.mean + gain.std < 0 else "is within noise of"


def _at(point: CurvePoint) -> str:
    gain = point.scratch_gain
    return f"{point.macs_reduction.mean:.2f}x ({gain.mean:+.2f} ± {gain.std:.2f})"


def _gain(low: CurvePoint, high: CurvePoint, metric: str) -> float:
    return getattr(high, metric).mean - getattr(low, metric).mean


def _noise(low: CurvePoint, high: CurvePoint, metric: str) -> float:
    return math.hypot(getattr(low, metric).std, getattr(high, metric).std)


def _finite(stat: Stat) -> bool:
    return math.isfinite(stat.mean)
