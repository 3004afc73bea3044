"""One point of a sweep with structprune: compress to a MACs target, verify, recover, measure; the point's
row goes on with its pruned model (`Pruned`) to the optional arms (Scratch-B, latency)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from structprune.api import compress
from structprune.criteria import get_criterion
from structprune.data import DataBundle, evaluate_accuracy
from structprune.errors import StructpruneError
from structprune.recover import RecoveryConfig, recover
from structprune.sweep.config import SweepConfig
from structprune.sweep.rows import SweepRow, failed_row
from structprune.sweep.selecting import plan_to_target


@dataclass(frozen=True, eq=False)
class Dense:
    """The dense model of one seed and what every point of that seed compares with."""

    model: nn.Module
    example_inputs: Any
    seed: int
    macs: int
    params: int
    accuracy: float


@dataclass(frozen=True, eq=False)
class Pruned:
    """A point's row and its pruned model before recovery (None when the point failed)."""

    row: SweepRow
    model: nn.Module | None


@dataclass(frozen=True, eq=False)
class Point:
    """Where a point sits: its index, the MACs reduction asked for, the data it prunes and recovers on."""

    index: int
    reduction: float
    bundle: DataBundle
    calibration: DataLoader


def prune_point(dense: Dense, criterion: str, point: Point, config: SweepConfig) -> Pruned:
    """compress(target_macs = 1 / reduction) with `criterion` (calibration data for every criterion, so
    each gets BatchNorm re-estimation; data-driven ones also their layer refit), then the recovery
    budget. A criterion that chooses its own channels (`select`: i-SpaSP, coreset) gets the plan whose
    final selection meets the target (`selecting.plan_to_target`), then compress verifies and calibrates it. A
    point that cannot be produced is a failed row that says why."""
    start = time.perf_counter()
    fraction = 1.0 / point.reduction
    try:
        if callable(getattr(get_criterion(criterion), "select", None)):
            plan = plan_to_target(dense.model, dense.example_inputs, criterion, fraction, point.calibration,
                                  dense.seed, config.round_to)
            result = compress(dense.model, dense.example_inputs, plan=plan, criterion=criterion, seed=dense.seed,
                              data=point.calibration)
        else:
            result = compress(dense.model, dense.example_inputs, target_macs=fraction, criterion=criterion,
                              seed=dense.seed, data=point.calibration, round_to=config.round_to)
    except StructpruneError as exc:
        return Pruned(structprune_failure(criterion, dense, point, start, exc), None)
    report = result.report
    one_shot, final = recovered_accuracy(result.model, dense, point.bundle, config)
    return Pruned(measured_row("structprune", criterion, dense, point, (report.macs_after, report.params_after),
                               (one_shot, final), bool(report.verification.get("ok")), "structprune",
                               time.perf_counter() - start), result.model)


def structprune_failure(criterion: str, dense: Dense, point: Point, start: float, exc: Exception) -> SweepRow:
    """The failed row of a structprune point, the error on one line."""
    return failed_row("structprune", criterion, dense.seed, point.index, point.reduction, (dense.macs, dense.params),
                      dense.accuracy, "structprune", time.perf_counter() - start, " ".join(str(exc).split()))


def recovered_accuracy(pruned: nn.Module, dense: Dense, bundle: DataBundle, config: SweepConfig) -> tuple[float, float]:
    """(accuracy before recovery, after `config.epochs` of recovery); the same budget for every tool."""
    one_shot = evaluate_accuracy(pruned, bundle.val)
    if not config.epochs:
        return one_shot, one_shot
    recovery = RecoveryConfig(method=config.recover, epochs=config.epochs, lr=config.lr, seed=dense.seed,
                              progress=False, measure_dead_rate=False)
    teacher = dense.model if config.recover == "distill" else None
    recovered = recover(pruned, bundle.train, bundle.val, recovery, dense=teacher)
    return one_shot, evaluate_accuracy(recovered.model, bundle.val)


def measured_row(tool: str, criterion: str, dense: Dense, point: Point, after: tuple[int, int],
                 accuracy: tuple[float, float], verified: bool, check: str, seconds: float) -> SweepRow:
    """A row from what was measured: after = (MACs, params) of the pruned model, accuracy = (one-shot, final)."""
    macs, params = after
    return SweepRow(tool, criterion, dense.seed, point.index, point.reduction, dense.macs, macs, dense.params, params,
                    dense.params / max(params, 1), dense.macs / max(macs, 1), accuracy[0], accuracy[1],
                    dense.accuracy, accuracy[1] - dense.accuracy, verified, check, seconds)
