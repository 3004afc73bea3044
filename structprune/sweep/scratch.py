"""Scratch-B at a sweep point: the pruned architecture re-initialised and trained for the dense model's
training compute (structprune.recover, method 'scratch-b': dense epochs x dense MACs / pruned MACs, capped
at ScratchB.max_factor), with the dense training's recipe; the row gets `accuracy_scratch`,
`scratch_epochs` and `scratch_seconds`."""
from __future__ import annotations

import time
from dataclasses import replace

from structprune.data import evaluate_accuracy
from structprune.recover import recover
from structprune.sweep.options import ScratchB
from structprune.sweep.points import Point, Pruned
from structprune.sweep.rows import SweepRow


def wants_scratch(pruned: Pruned, spec: ScratchB | None) -> bool:
    """Does this point get Scratch-B: a pruned model of a structprune curve that `spec` names."""
    row = pruned.row
    return spec is not None and pruned.model is not None and row.tool == "structprune" and row.criterion in \
        spec.criteria


def with_scratch(pruned: Pruned, point: Point, spec: ScratchB) -> SweepRow:
    """The row with the Scratch-B accuracy of its architecture (same seed: the re-initialisation draws from it)."""
    start, row = time.perf_counter(), pruned.row
    result = recover(pruned.model, point.bundle.train, point.bundle.val, spec.recovery(row.seed),
                     dense_macs=row.macs_before, pruned_macs=row.macs_after)
    return replace(row, accuracy_scratch=evaluate_accuracy(result.model, point.bundle.val),
                   scratch_epochs=result.epochs, scratch_seconds=time.perf_counter() - start)
