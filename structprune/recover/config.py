"""The values that cross into and out of recovery: RecoveryConfig in; EpochRecord and RecoveryResult out."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Mapping

from torch import nn

from structprune.recover.schedules import SCHEDULES

METHODS = ("auto", "finetune", "distill", "scratch-e", "scratch-b", "none")
OPTIMIZERS = ("sgd", "adamw")
DISTILL_TARGETS = ("auto", "logits", "embeddings")
METRICS = ("accuracy", "fidelity")
# Fields that do not change the numbers a run produces (a resumed run may differ in them).
_RUN_ONLY_FIELDS = ("checkpoint_dir", "resume", "progress")
# Fields of the label-free objective: they enter a run's fingerprint through the objective it resolved
# to (recover adds them for embedding runs), so classification checkpoints keep their fingerprint.
_OBJECTIVE_FIELDS = ("distill_target", "pooled_cosine_weight", "pooled_mse_weight", "token_mse_weight")


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

    Recovery without labels (encoders, sentence embeddings; see `structprune.recover.embeddings`):
    `distill_target` is "logits" (the KL above; needs labelled batches), "embeddings" (no labels: the
    student's final states are matched to the dense model's, padding excluded by the inputs'
    `attention_mask`), or "auto": embeddings when the dense model returns hidden states
    (`last_hidden_state`, a (batch, tokens, width) tensor) or the data has no labels, else logits.
    The embedding loss is `pooled_cosine_weight`·(1 − cos) of the mask-weighted mean-pooled embeddings
    + `pooled_mse_weight`·their relative MSE + `token_mse_weight`·relative MSE of the real tokens'
    states. The default (cosine 1, token MSE 1) was measured on all-MiniLM-L6-v2 pruned one-shot
    (benchmarks/minilm_distill.py): cosine alone is what sentence encoders are used through, and the
    token term keeps every layer's output in place, which generalises better than pooled terms alone.
    A student whose output width differs from the teacher's is compared through a least-squares-
    initialised linear map trained with it and dropped after. Validation then reports fidelity (mean
    cosine of pooled embeddings to the dense model's) instead of accuracy; distill_weight,
    temperature and label_smoothing do not apply.

    `dropout=False` trains the student with every dropout off: the model runs in eval mode except its
    layers with running statistics (BatchNorm), which still normalise by the batch and update their
    averages; dropout as a module, as `F.dropout(..., training=self.training)` or as attention's
    `dropout_p` all read that mode. Matching a dense teacher's function, as distillation does, has no
    labels to overfit, and dropout's noise in the student's outputs is larger than the error left to
    remove (all-MiniLM-L6-v2, dropout 0.1, pruned one-shot: see benchmarks/minilm_distill.py).

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
    distill_target: str = "auto"
    pooled_cosine_weight: float = 1.0
    pooled_mse_weight: float = 0.0
    token_mse_weight: float = 1.0
    dropout: bool = True

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, tuple(SCHEDULES))
        _check_choice("dense_schedule", self.dense_schedule, tuple(SCHEDULES))
        _check_choice("distill_target", self.distill_target, DISTILL_TARGETS)
        checks = [("epochs", self.epochs >= 0), ("lr", self.lr > 0), ("temperature", self.temperature > 0),
                  ("distill_weight", 0.0 <= self.distill_weight <= 1.0), ("warmup", 0.0 <= self.warmup < 1.0),
                  ("label_smoothing", 0.0 <= self.label_smoothing < 1.0),
                  ("dense_epochs", self.dense_epochs is None or self.dense_epochs > 0),
                  *((name, getattr(self, name) >= 0) for name in _OBJECTIVE_FIELDS[1:])]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"RecoveryConfig.{name}={getattr(self, name)!r} is out of range")
        if not any(getattr(self, name) for name in _OBJECTIVE_FIELDS[1:]):
            raise ValueError("RecoveryConfig: the embedding loss needs a positive weight "
                             f"({', '.join(_OBJECTIVE_FIELDS[1:])})")
        if self.nesterov and self.optimizer == "sgd" and self.momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0 (set nesterov=False for plain SGD)")

    def fingerprint(self) -> dict:
        """The fields that determine the numbers; a checkpoint only resumes a run with the same ones."""
        kept = {k: v for k, v in asdict(self).items() if k not in _RUN_ONLY_FIELDS + _OBJECTIVE_FIELDS + ("dropout",)}
        return kept if self.dropout else {**kept, "dropout": False}  # runs with dropout keep their fingerprint


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"RecoveryConfig.{name}={value!r}; choose one of: {', '.join(choices)}")


@dataclass(frozen=True)
class EpochRecord:
    """One epoch: training loss/accuracy (running means), validation loss/accuracy, the LR of its last
    step and its largest LR, and the dynamic dead-neuron rate measured during its training passes
    (None if not measured). Runs without labels record fidelity (mean cosine of the pooled embeddings
    to the dense model's, in [-1, 1]) instead of accuracy; the fidelity keys appear in `to_json` only
    when measured, so a classification record reads as it always did."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    lr: float
    lr_max: float
    dead_rate: float | None = None
    dead_rate_per_layer: Mapping[str, float] = field(default_factory=dict)
    train_fidelity: float | None = None
    val_fidelity: float | None = None

    def to_json(self) -> dict:
        record = {**asdict(self), "dead_rate_per_layer": dict(self.dead_rate_per_layer)}
        return {k: v for k, v in record.items() if v is not None or k not in _FIDELITY_FIELDS}


_FIDELITY_FIELDS = ("train_fidelity", "val_fidelity")


@dataclass(frozen=True, eq=False)
class RecoveryResult:
    """The recovered model, the method and epochs actually used, the per-epoch history, the peak LR the
    schedule ran with, validation accuracy before recovery, and where the last checkpoint is.
    `metric` says what validation measured: "accuracy" (percent) or, without labels, "fidelity" (mean
    cosine of the pooled embeddings to the dense model's; `initial_val_fidelity` before recovery)."""

    model: nn.Module
    method: str
    epochs: int
    history: tuple[EpochRecord, ...]
    schedule: str
    base_lr: float
    initial_val_accuracy: float | None = None
    checkpoint: str | None = None
    notes: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    metric: str = "accuracy"
    initial_val_fidelity: float | None = None

    def __post_init__(self) -> None:
        _check_choice("metric", self.metric, METRICS)

    @property
    def final_val_accuracy(self) -> float | None:
        return self.history[-1].val_accuracy if self.history else self.initial_val_accuracy

    @property
    def final_val_fidelity(self) -> float | None:
        return self.history[-1].val_fidelity if self.history else self.initial_val_fidelity

    def to_json(self) -> dict:
        """The report's `recovery` section: `report.with_extra(recovery=result.to_json())`; `metric`
        names what validation measured, and fidelity runs add `val_fidelity_before` / `_after`."""
        fidelity = {"val_fidelity_before": self.initial_val_fidelity,
                    "val_fidelity_after": self.final_val_fidelity} if self.metric == "fidelity" else {}
        return {"method": self.method, "epochs": self.epochs, "schedule": self.schedule,
                "base_lr": self.base_lr, "metric": self.metric, "val_accuracy_before": self.initial_val_accuracy,
                "val_accuracy_after": self.final_val_accuracy, **fidelity, "checkpoint": self.checkpoint,
                "notes": dict(self.notes), "history": [r.to_json() for r in self.history]}
