"""SweepConfig: what a sweep runs (criteria, compression levels, seeds, recovery budget), checked once.

Compression levels are MACs reductions (dense MACs / pruned MACs) spaced geometrically from
`min_reduction` to `max_reduction`; each is pruned with `compress(target_macs=1 / reduction)`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from structprune.criteria import get_criterion
from structprune.errors import UsageError
from structprune.sweep.options import GROUP_LASSO, GroupLassoCurve, LatencyProbe, ScratchB

REFERENCE_CRITERIA = ("tp_l2", "tp_random")  # Torch-Pruning's magnitude (L2) and random importance
DEFAULT_CRITERIA = ("l2", "taylor", "dropnet", "ispasp", "coreset")
RECOVERY_METHODS = ("finetune", "distill")


@dataclass(frozen=True)
class SweepConfig:
    """How a sweep prunes and recovers; building one checks every field (UsageError, one line).

    - criteria: structprune criteria (registered names), each a curve; reference: also Torch-Pruning's
      `REFERENCE_CRITERIA` as reference lines (omitted with a note when torch_pruning is not installed).
    - points, min_reduction, max_reduction: MACs reductions, geometric (`reductions`).
    - seeds: how many seeds, `seed`, `seed + 1`, ...: each seeds the dense model's training (when the job
      trains it), the criterion and the recovery; the data split stays that of `seed`.
    - epochs, recover, lr: the same recovery budget for every point (0 epochs: one-shot only).
    - knee_drop: accuracy points below the baseline that mark the knee of a curve.
    - limit: estimate the pruning limit (structprune.limit) on the first seed's dense model, before pruning.
    - calibration_samples: training samples that data-driven criteria, BatchNorm re-estimation and the
      limit's Hessian read.
    - round_to: every layer a pruned point touches keeps a multiple of this many channels (compress's
      `round_to`; Torch-Pruning's reference lines get the same), so latency is not lost to odd counts.
    - group_lasso, scratch, latency: the optional arms (structprune.sweep.options; None: not run): the
      group-lasso curve, Scratch-B of the named curves' architectures, onnxruntime latency of every point.

    >>> SweepConfig(points=5).reductions
    (1.5, 2.28, 3.464, 5.264, 8.0)
    """

    criteria: tuple[str, ...] = DEFAULT_CRITERIA
    points: int = 5
    seeds: int = 1
    seed: int = 0
    min_reduction: float = 1.5
    max_reduction: float = 8.0
    epochs: int = 2
    recover: str = "finetune"
    lr: float = 0.01
    reference: bool = True
    knee_drop: float = 2.0
    limit: bool = True
    calibration_samples: int = 512
    progress: bool = True
    round_to: int = 1
    group_lasso: GroupLassoCurve | None = None
    scratch: ScratchB | None = None
    latency: LatencyProbe | None = None

    def __post_init__(self) -> None:
        criteria = (self.criteria,) if isinstance(self.criteria, str) else tuple(self.criteria)
        object.__setattr__(self, "criteria", criteria)
        _check(bool(criteria) and len(set(criteria)) == len(criteria),
               f"criteria {list(criteria)}: name each criterion once, e.g. l2,taylor")
        for name in criteria:
            _check_criterion(name)
        _check(self.points >= 2, f"points={self.points}: a curve needs at least 2 points (5 recommended)")
        _check(self.seeds >= 1 and self.seed >= 0, f"seeds={self.seeds}, seed={self.seed}: need seeds >= 1, seed >= 0")
        _check(1.0 < self.min_reduction < self.max_reduction,
               f"reductions {self.min_reduction:g}..{self.max_reduction:g}: need 1 < min < max, e.g. 1.5 and 8")
        _check(self.epochs >= 0 and self.lr > 0, f"epochs={self.epochs}, lr={self.lr:g}: need epochs >= 0, lr > 0")
        _check(self.recover in RECOVERY_METHODS, f"recover={self.recover!r}: use one of {', '.join(RECOVERY_METHODS)}")
        _check(self.knee_drop > 0, f"knee_drop={self.knee_drop:g}: give accuracy points > 0, e.g. 2")
        _check(self.calibration_samples >= 1, "calibration_samples must be >= 1")
        _check(isinstance(self.round_to, int) and self.round_to >= 1, f"round_to={self.round_to}: need an integer >= 1")
        unknown = sorted(set(self.scratch.criteria) - set(self.curve_names)) if self.scratch else []
        _check(not unknown, f"Scratch-B of {', '.join(unknown)}: name curves of this sweep "
                            f"({', '.join(self.curve_names)}) or 'all'")

    @property
    def curve_names(self) -> tuple[str, ...]:
        """The structprune curves: the criteria, then the group-lasso curve when asked for."""
        return self.criteria + ((GROUP_LASSO,) if self.group_lasso else ())

    @property
    def reductions(self) -> tuple[float, ...]:
        """The MACs reductions of the points, rounded to 3 decimals."""
        grid = np.geomspace(self.min_reduction, self.max_reduction, self.points)
        return tuple(round(float(r), 3) for r in grid)

    @property
    def seed_values(self) -> tuple[int, ...]:
        return tuple(range(self.seed, self.seed + self.seeds))


def parse_criteria(text: str) -> tuple[str, ...]:
    """'l2, taylor' -> ('l2', 'taylor').

    >>> parse_criteria("l2, taylor,dropnet")
    ('l2', 'taylor', 'dropnet')
    """
    return tuple(name.strip() for name in text.split(",") if name.strip())


def _check_criterion(name: str) -> None:
    if name == GROUP_LASSO:
        raise UsageError("sweep: group_lasso is a curve of its own (sparsity training first): pass --group-lasso "
                         "LAMBDA [--sparsity-train E] instead of naming it in --criteria")
    if name in REFERENCE_CRITERIA:
        raise UsageError(f"criterion '{name}' is a Torch-Pruning reference line; it runs by itself unless you pass "
                         "--no-reference, so leave it out of --criteria")
    try:
        get_criterion(name)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(f"sweep: {message}")
