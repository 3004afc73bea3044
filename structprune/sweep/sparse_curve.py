"""The group-lasso curve of a sweep: sparsity training once per seed, then a threshold per point.

Per seed, `sparsify_dense` trains a copy of the dense model `GroupLassoCurve.epochs` with the coupled
group-lasso penalty (structprune.group_lasso.sparsify; SGD, cosine, peak `lr`, the seed's). Each point then
prunes that sparse model at its MACs budget by one raw group-norm threshold (`prune_sparse`, verified and
BatchNorm re-estimated as every compress), and gets the same recovery budget as the other curves. Its rows
carry `extra_epochs` = the sparsity epochs, training the other curves did not get; `seconds` covers the
point only (the shared sparsity training is timed once, in the SparseDense).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

from structprune.data import DataBundle
from structprune.errors import StructpruneError
from structprune.group_lasso import GroupLassoConfig, SparsityResult, prune_sparse, sparsify
from structprune.recover import RecoveryConfig
from structprune.sweep.config import SweepConfig
from structprune.sweep.options import GROUP_LASSO, GroupLassoCurve
from structprune.sweep.points import Dense, Point, Pruned, measured_row, recovered_accuracy, structprune_failure


@dataclass(frozen=True, eq=False)
class SparseDense:
    """The sparsity-trained copy of one seed's dense model, and how long its training took."""

    sparse: SparsityResult
    seconds: float


def sparsify_dense(dense: Dense, bundle: DataBundle, curve: GroupLassoCurve) -> SparseDense:
    """Group-lasso training of a copy of `dense.model` (the dense model is not modified)."""
    start = time.perf_counter()
    training = RecoveryConfig(lr=curve.lr, schedule="cosine", seed=dense.seed, progress=False, measure_dead_rate=False)
    sparse = sparsify(dense.model, dense.example_inputs, bundle.train, bundle.val,
                      GroupLassoConfig(epochs=curve.epochs, lam=curve.lam), training=training, seed=dense.seed)
    return SparseDense(sparse, time.perf_counter() - start)


def prune_group_lasso_point(dense: Dense, sparse: SparseDense, point: Point, config: SweepConfig) -> Pruned:
    """Threshold the sparse model at the point's MACs budget, recover, and count the sparsity epochs."""
    start = time.perf_counter()
    extra = sparse.sparse.config.epochs
    try:
        result = prune_sparse(sparse.sparse, dense.example_inputs, target_macs=1.0 / point.reduction, seed=dense.seed,
                              data=point.calibration, round_to=config.round_to)
    except StructpruneError as exc:
        return Pruned(replace(structprune_failure(GROUP_LASSO, dense, point, start, exc), extra_epochs=extra), None)
    report = result.report
    accuracy = recovered_accuracy(result.model, dense, point.bundle, config)
    row = measured_row("structprune", GROUP_LASSO, dense, point, (report.macs_after, report.params_after), accuracy,
                       bool(report.verification.get("ok")), "structprune", time.perf_counter() - start)
    return Pruned(replace(row, extra_epochs=extra), result.model)
