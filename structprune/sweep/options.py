"""The optional arms of a sweep, each a frozen value inside SweepConfig (None: not run):

- ScratchB: also train each pruned architecture of the named curves from re-initialised weights for the
  dense model's training compute (Liu et al., "Rethinking the value of network pruning", arXiv 1810.05270):
  `dense_epochs` x dense MACs / pruned MACs epochs (optionally capped at `max_factor`), with the dense
  training's recipe (SGD, one-cycle, peak `lr`). It answers "prune big or train small?" on the user's task.
- GroupLassoCurve: a curve of its own, `group_lasso`: `epochs` of group-lasso sparsity training (weight `lam`,
  cosine LR `lr`) once per seed on the dense model, then each point thresholds the coupled group norm at its
  MACs budget (structprune.group_lasso) and gets the sweep's recovery budget; the rows count the sparsity
  epochs in `extra_epochs`.
- LatencyProbe: onnxruntime latency of the dense model and of every pruned one beside it, at `batch` rows
  (None: the example's), `runs` timed calls each (structprune.onnx.compare_latency), for the first `seeds`
  seeds (None: all; each pruned architecture is exported once, which dominates the cost).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from structprune.errors import UsageError
from structprune.recover import RecoveryConfig

GROUP_LASSO = "group_lasso"  # the criterion name of the group-lasso curve in rows, tables and the figure
DENSE_LR = 0.05  # one-cycle peak LR of the dense training (--train-epochs, the demo's) and of Scratch-B


@dataclass(frozen=True)
class ScratchB:
    """Scratch-B for the pruned architectures of `criteria` (curve names; GROUP_LASSO included).

    >>> ScratchB(("l2",), dense_epochs=6, max_factor=4.0).recovery(seed=1).scratch_b_max_factor
    4.0
    """

    criteria: tuple[str, ...]
    dense_epochs: int
    lr: float = DENSE_LR
    max_factor: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "criteria", tuple(self.criteria))
        _check(bool(self.criteria), "Scratch-B names no curve; e.g. --scratch l2 or --scratch all")
        _check(self.dense_epochs >= 1, f"Scratch-B needs the dense model's training epochs (>= 1), got "
                                       f"{self.dense_epochs}; pass --train-epochs E")
        _check(self.lr > 0, f"Scratch-B lr={self.lr:g}: need lr > 0")
        _check(self.max_factor is None or self.max_factor >= 1,
               f"Scratch-B max factor {self.max_factor}: need >= 1 (it caps dense MACs / pruned MACs), e.g. 4")

    def recovery(self, seed: int) -> RecoveryConfig:
        """recover()'s settings: method scratch-b with the dense training's recipe (recover.scratch_b_epochs
        turns dense_epochs and the MACs into the epochs)."""
        return RecoveryConfig(method="scratch-b", dense_epochs=self.dense_epochs, lr=self.lr, schedule="onecycle",
                              scratch_b_max_factor=self.max_factor, seed=seed, progress=False,
                              measure_dead_rate=False)


@dataclass(frozen=True)
class GroupLassoCurve:
    """Group-lasso sparsity training (`epochs`, weight `lam`, peak LR `lr`), then threshold pruning per point.

    >>> GroupLassoCurve(lam=0.1).epochs
    5
    """

    lam: float
    epochs: int = 5
    lr: float = 0.01

    def __post_init__(self) -> None:
        _check(0 < self.lam < math.inf, f"--group-lasso {self.lam}: the penalty weight must be > 0, e.g. 0.1")
        _check(self.epochs >= 1, f"--sparsity-train {self.epochs}: the group-lasso curve needs >= 1 epoch, e.g. 5")
        _check(self.lr > 0, f"group-lasso lr={self.lr:g}: need lr > 0")


@dataclass(frozen=True)
class LatencyProbe:
    """onnxruntime latency: `batch` rows (None: the example inputs' own), `runs` timed calls per model, the
    rows of the first `seeds` seeds (None: every seed).

    >>> LatencyProbe(batch=64, seeds=1).times(0), LatencyProbe(batch=64, seeds=1).times(1)
    (True, False)
    """

    batch: int | None = None
    runs: int = 20
    seeds: int | None = None

    def __post_init__(self) -> None:
        _check(self.batch is None or self.batch >= 1, f"--latency-batch {self.batch}: need a batch size >= 1")
        _check(self.runs >= 1, f"latency runs={self.runs}: need >= 1")
        _check(self.seeds is None or self.seeds >= 1, f"--latency-seeds {self.seeds}: need >= 1")

    def times(self, seed_index: int) -> bool:
        """Are the rows of the `seed_index`-th seed (0: the first) timed?"""
        return self.seeds is None or seed_index < self.seeds


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(f"sweep: {message}")
