"""run_sweep: prune one model at several MACs targets with several criteria and seeds, under one recovery
budget, with Torch-Pruning's criteria as reference lines and the pruning limit estimated first; the optional
arms (group-lasso curve, Scratch-B, latency) ride on the same points."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from torch import nn
from tqdm import tqdm

from structprune.data import DataBundle, accuracy_unmeasurable, evaluate_accuracy
from structprune.errors import UsageError
from structprune.graph.cost import count_macs, count_params
from structprune.limit import PruningLimit, estimate_pruning_limit
from structprune.pipeline import calibration_loader
from structprune.sweep.config import REFERENCE_CRITERIA, SweepConfig
from structprune.sweep.curves import Curve, Knee, Stat, baseline, best_knee, curves, knee
from structprune.sweep.latency import LatencyMeter
from structprune.sweep.options import GROUP_LASSO
from structprune.sweep.points import Dense, Point, Pruned, prune_point
from structprune.sweep.reference import prune_reference_point, reference_available, reference_ratios
from structprune.sweep.rows import SweepRow
from structprune.sweep.scratch import wants_scratch, with_scratch
from structprune.sweep.sparse_curve import prune_group_lasso_point, sparsify_dense

DenseFactory = Callable[[int], nn.Module]


@dataclass(frozen=True, eq=False)
class SweepResult:
    """Every row of a sweep, the limit estimated before it (None when not asked), and notes (e.g. why
    the reference lines are missing)."""

    name: str
    config: SweepConfig
    rows: tuple[SweepRow, ...]
    limit: PruningLimit | None
    notes: tuple[str, ...]

    def curves(self) -> list[Curve]:
        return curves(list(self.rows))

    def baseline(self) -> Stat:
        return baseline(list(self.rows))

    def knees(self, metric: str = "accuracy") -> list[Knee]:
        """The knee of every curve with a measured point, on `metric` ('accuracy' after recovery, or
        'accuracy_one_shot')."""
        dense = self.baseline()
        found = [knee(curve, dense, self.config.knee_drop, metric) for curve in self.curves()]
        return [k for k in found if k is not None]

    def observed_knee(self, metric: str = "accuracy") -> Knee | None:
        """The knee of the best structprune curve: how far this model prunes before it breaks."""
        return best_knee([k for k in self.knees(metric) if k.tool == "structprune"])

    @property
    def verified(self) -> bool:
        """Did every point of the sweep pass its check?"""
        return all(row.verified for row in self.rows)


def run_sweep(dense: nn.Module | DenseFactory, example_inputs: Any, bundle: DataBundle, config: SweepConfig, *,
              name: str = "model") -> SweepResult:
    """Sweep `dense` (a model, or `seed -> model` to build or train one per seed) on `bundle` (labelled,
    with a validation split).

    >>> import torch, models_zoo
    >>> from structprune.data import load_data
    >>> bundle = load_data("digits", input_shape=(64,))
    >>> config = SweepConfig(criteria=("l2",), points=2, epochs=0, reference=False, limit=False, progress=False)
    >>> result = run_sweep(models_zoo.create("mlp", in_features=64), torch.randn(1, 64), bundle, config)
    >>> [(r.target, abs(r.theoretical_speedup / r.target - 1) < 0.025) for r in result.rows], result.verified
    ([(1.5, True), (8.0, True)], True)
    """
    make = dense if callable(dense) and not isinstance(dense, nn.Module) else (lambda seed: dense)
    calibration = calibration_loader(bundle, config.calibration_samples)
    points = [Point(i, r, bundle, calibration) for i, r in enumerate(config.reductions)]
    missing = reference_available() if config.reference else "Torch-Pruning reference lines not asked for"
    references = REFERENCE_CRITERIA if not missing else ()
    bar = tqdm(total=config.seeds * len(points) * (len(config.curve_names) + len(references)), desc="sweep",
               unit="point", disable=None if config.progress else True)
    rows, limit, ratios = [], None, None
    with _meter(config, example_inputs) as meter:
        for k, seed in enumerate(config.seed_values):
            model = _dense(make(seed), example_inputs, bundle, seed)
            timer = meter if meter is not None and config.latency.times(k) else None
            if limit is None and config.limit:
                limit = estimate_pruning_limit(model.model, example_inputs, calibration, seed=seed)
            if references and ratios is None:
                ratios = reference_ratios(model, config.reductions, config.round_to)
            runs = _runs(model, config, bundle, references, ratios)
            rows += _run_points(bar, points, runs, config, partial(_arms, model, timer, config))
    bar.close()
    return SweepResult(name, config, tuple(rows), limit, (missing,) if missing else ())


def _runs(model: Dense, config: SweepConfig, bundle: DataBundle, references: tuple, ratios) -> list[tuple]:
    """(curve name, point -> Pruned) of every curve of one seed; the group-lasso model is trained here, once."""
    runs = [(criterion, partial(prune_point, model, criterion)) for criterion in config.criteria]
    if config.group_lasso is not None:
        sparse = sparsify_dense(model, bundle, config.group_lasso)
        runs.append((GROUP_LASSO, partial(prune_group_lasso_point, model, sparse)))
    return runs + [(criterion, partial(_reference_point, model, criterion, ratios)) for criterion in references]


def _run_points(bar: tqdm, points: list[Point], runs: list[tuple], config: SweepConfig,
                arms: Callable[[Pruned, Point], SweepRow]) -> list[SweepRow]:
    rows = []
    for name, run in runs:
        for point in points:
            bar.set_postfix_str(f"{name} {point.reduction:g}x")
            rows.append(arms(run(point, config), point))
            bar.update()
    return rows


def _arms(dense: Dense, meter: LatencyMeter | None, config: SweepConfig, pruned: Pruned, point: Point) -> SweepRow:
    """The point's row with Scratch-B and latency added where asked for (and the point was pruned)."""
    row = with_scratch(pruned, point, config.scratch) if wants_scratch(pruned, config.scratch) else pruned.row
    if meter is not None and pruned.model is not None:
        row = meter.measure(Pruned(row, pruned.model), dense)
    return row


def _meter(config: SweepConfig, example_inputs: Any):
    if config.latency is None:
        return contextlib.nullcontext()
    return LatencyMeter(config.latency, example_inputs)


def _reference_point(dense: Dense, criterion: str, ratios: dict, point: Point, config: SweepConfig) -> Pruned:
    return prune_reference_point(dense, criterion, ratios[point.reduction], point, config)


def _dense(model: nn.Module, example_inputs: Any, bundle: DataBundle, seed: int) -> Dense:
    """The dense model of a seed, counted and measured once."""
    problem = accuracy_unmeasurable(model, bundle.val)
    if problem:
        raise UsageError(f"a sweep compares accuracies, but accuracy cannot be measured here: {problem}")
    model = model.eval()
    return Dense(model, example_inputs, seed, count_macs(model, example_inputs), count_params(model),
                 evaluate_accuracy(model, bundle.val))
