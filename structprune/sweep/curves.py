"""Curves (mean ± std over seeds per criterion and point) and their knees.

The knee of a curve is its first point, in order of growing MACs reduction, whose mean accuracy is more
than `drop` points below the mean baseline (dense) accuracy; `last_ok` is the point before it. A curve
that never drops that far has no knee within the sweep (`reduction` None).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from structprune.sweep.rows import SweepRow


@dataclass(frozen=True)
class Stat:
    """Mean and standard deviation (population, over seeds) of the finite values; NaN when none."""

    mean: float
    std: float

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        finite = [v for v in values if math.isfinite(v)]
        return cls(float(np.mean(finite)), float(np.std(finite))) if finite else cls(math.nan, math.nan)

    def text(self, digits: int = 2) -> str:
        return "n/a" if math.isnan(self.mean) else f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass(frozen=True)
class CurvePoint:
    """One point of a curve, over seeds: achieved reductions, accuracies, and whether every seed verified;
    `scratch_gain` is the paired difference accuracy - accuracy_scratch (same seed, same architecture),
    `extra_epochs` the training before pruning beyond the dense model's (the most of any seed)."""

    index: int
    target: float
    macs_reduction: Stat
    params_reduction: Stat
    accuracy: Stat
    accuracy_one_shot: Stat
    delta: Stat
    seeds: int
    verified: bool
    accuracy_scratch: Stat
    scratch_gain: Stat
    latency_speedup: Stat
    speedup_per_mac: Stat
    extra_epochs: int


@dataclass(frozen=True)
class Curve:
    tool: str
    criterion: str
    points: tuple[CurvePoint, ...]


@dataclass(frozen=True)
class Knee:
    """Where a curve breaks: the MACs / params reduction of its knee point (None: no knee in the sweep),
    and of the last point before it (None: the first point already dropped); `point` is the knee point's
    index and `value` the metric there (the last point's, without a knee)."""

    tool: str
    criterion: str
    metric: str
    reduction: float | None
    params_reduction: float | None
    last_ok: float | None
    point: int | None = None
    value: float | None = None

    def text(self) -> str:
        if self.reduction is None:
            return f"none up to {self.last_ok:.2f}x MACs" if self.last_ok else "none"
        before = f" (last within: {self.last_ok:.2f}x)" if self.last_ok else " (already at the first point)"
        return f"{self.reduction:.2f}x MACs{before}"


def curves(rows: list[SweepRow]) -> list[Curve]:
    """One curve per (tool, criterion), in the order the rows first name them.

    >>> from structprune.sweep.rows import SweepRow
    >>> row = SweepRow("structprune", "l2", 0, 0, 2.0, 100, 50, 10, 5, 2.0, 2.0, 90.0, 95.0, 96.0, -1.0, True, "x", 1.0)
    >>> curves([row])[0].points[0].accuracy
    Stat(mean=95.0, std=0.0)
    """
    keys = list(dict.fromkeys((r.tool, r.criterion) for r in rows))
    return [Curve(tool, crit, _points([r for r in rows if (r.tool, r.criterion) == (tool, crit)]))
            for tool, crit in keys]


def baseline(rows: list[SweepRow]) -> Stat:
    """The dense model's accuracy over seeds (each seed counted once)."""
    return Stat.of(list({r.seed: r.baseline_accuracy for r in rows}.values()))


def knee(curve: Curve, dense: Stat, drop: float, metric: str = "accuracy") -> Knee | None:
    """The knee of `curve` on `metric` ('accuracy' after recovery or 'accuracy_one_shot'); None for a curve
    without one measured point (every seed failed at every point)."""
    ordered = sorted((p for p in curve.points if math.isfinite(p.macs_reduction.mean)),
                     key=lambda p: p.macs_reduction.mean)
    if not ordered:
        return None
    last_ok = None
    for point in ordered:
        value = getattr(point, metric).mean
        if not math.isfinite(value) or value < dense.mean - drop:
            return Knee(curve.tool, curve.criterion, metric, point.macs_reduction.mean, point.params_reduction.mean,
                        last_ok, point.index, value)
        last_ok = point.macs_reduction.mean
    return Knee(curve.tool, curve.criterion, metric, None, None, last_ok, None, value)


def best_knee(knees: list[Knee]) -> Knee | None:
    """The knee furthest out, by point (no knee counts as furthest), then by the metric there: how far the
    best criterion prunes safely."""
    if not knees:
        return None
    return max(knees, key=lambda k: (k.reduction is None, -1 if k.point is None else k.point, k.value or 0.0))


def _points(rows: list[SweepRow]) -> tuple[CurvePoint, ...]:
    out = []
    for index in sorted({r.point for r in rows}):
        at = [r for r in rows if r.point == index]
        out.append(CurvePoint(index, at[0].target, Stat.of([r.theoretical_speedup for r in at]),
                              Stat.of([r.compression_ratio for r in at]), Stat.of([r.accuracy for r in at]),
                              Stat.of([r.accuracy_one_shot for r in at]), Stat.of([r.delta for r in at]), len(at),
                              all(r.verified for r in at), Stat.of([r.accuracy_scratch for r in at]),
                              Stat.of([r.accuracy - r.accuracy_scratch for r in at]),
                              Stat.of([r.latency_speedup for r in at]), Stat.of([r.speedup_per_mac for r in at]),
                              max(r.extra_epochs for r in at)))
    return tuple(out)
