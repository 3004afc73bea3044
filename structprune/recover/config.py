"""The values that cross into and out of recovery: RecoveryConfig in; EpochRecord and RecoveryResult out."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Mapping

from torch import nn

from structprune.recover.schedules import SCHEDULES

METHODS = ("auto", "finetune", "distill", "scratch-e", "scratch-b", "none")
OPTIMIZERS = ("sgd", "adamw")
# Fields that do not change the numbers a run produces (a resumed run may differ in them).
_RUN_ONLY_FIELDS = ("checkpoint_dir", "resume", "progress")


@dataclass(frozen=True)
class RecoveryConfig:
    """How to recover a pruned model.

    method: "finetune" (train the kept weights), "distill" (finetune with a KL term towards the dense
    model's logits), "scratch-e" / "scratch-b" (re-initialise the pruned architecture and train it for
    `dense_epochs`, resp. `dense_epochs` × dense MACs / pruned MACs; Liu et al., arXiv 1810.05270),
    "none", or "auto" (distill when the dense model is given, else finetune).
    `lr` is the peak LR of the schedule; for "lrw" it is the original training's initial LR, whose
    `dense_schedule` over `dense_epochs` is replayed. `distill_weight` w mixes the losses as
    (1 − w)·task + w·T²·KL. Accuracies are in percent (0-100), as structprune.data.evaluate_accuracy reports them.

    >>> RecoveryConfig(method="distill", epochs=3, schedule="llr").schedule
    'llr'
    """

    method: str = "auto"
    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup: float = 0.1
    label_smoothing: float = 0.0
    distill_weight: float = 0.5
    temperature: float = 4.0
    checkpoint_dir: str | None = None
    resume: bool = False
    seed: int = 0
    dense_epochs: int | None = None
    dense_schedule: str = "cosine"
    scratch_b_max_factor: float | None = None
    measure_dead_rate: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, tuple(SCHEDULES))
        _check_choice("dense_schedule", self.dense_schedule, tuple(SCHEDULES))
        checks = [("epochs", self.epochs >= 0), ("lr", self.lr > 0), ("temperature", self.temperature > 0),
                  ("distill_weight", 0.0 <= self.distill_weight <= 1.0), ("warmup", 0.0 <= self.warmup < 1.0),
                  ("label_smoothing", 0.0 <= self.label_smoothing < 1.0),
                  ("dense_epochs", self.dense_epochs is None or self.dense_epochs > 0)]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"RecoveryConfig.{name}={getattr(self, name)!r} is out of range")
        if self.nesterov and self.optimizer == "sgd" and self.momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0 (set nesterov=False for plain SGD)")

    def fingerprint(self) -> dict:
        """The fields that determine the numbers; a checkpoint only resumes a run with the same ones."""
        return {k: v for k, v in asdict(self).items() if k not in _RUN_ONLY_FIELDS}


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"RecoveryConfig.{name}={value!r}; choose one of: {', '.join(choices)}")


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: training loss/accuracy (running means), validation loss/accuracy, the LR of its last
    step and its largest LR, and the dynamic dead-neuron rate measured during its training passes
    (None if not measured)."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    lr_max: float
    dead_rate: float | None = None
    dead_rate_per_layer: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**asdict(self), "dead_rate_per_layer": dict(self.dead_rate_per_layer)}


@dataclass(frozen=True, eq=False)
class RecoveryResult:
    """The recovered model, the method and epochs actually used, the per-epoch history, the peak LR the
    schedule ran with, validation accuracy before recovery, and where the last checkpoint is."""

    model: nn.Module
    method: str
    epochs: int
    history: tuple[EpochRecord, ...]
    schedule: str
    base_lr: float
    initial_val_accuracy: float | None = None
    checkpoint: str | None = None
    notes: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def final_val_accuracy(self) -> float | None:
        return self.history[-1].val_accuracy if self.history else self.initial_val_accuracy

    def to_json(self) -> dict:
        """The report's `recovery` section: `report.with_extra(recovery=result.to_json())`."""
        return {"method": self.method, "epochs": self.epochs, "schedule": self.schedule,
                "base_lr": self.base_lr, "val_accuracy_before": self.initial_val_accuracy,
                "val_accuracy_after": self.final_val_accuracy, "checkpoint": self.checkpoint,
                "notes": dict(self.notes), "history": [r.to_json() for r in self.history]}
