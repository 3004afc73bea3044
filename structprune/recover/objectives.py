"""What recovery optimises and measures, one object per kind of model output, so that one training
loop (progress bar, checkpoints, resume, DDP) serves both:

- `ClassificationObjective`: (inputs, labels) batches and logits; cross-entropy, plus KL towards the
  teacher's logits when distilling; validation accuracy in percent.
- `EmbeddingObjective`: batches with or without labels (labels are ignored) and encoders that return
  hidden states or embeddings; the label-free loss of `embeddings.EmbeddingLoss` towards the dense
  model; validation fidelity (mean cosine of the pooled embeddings to the dense model's).

`recovery_objective` picks one from `RecoveryConfig.distill_target`; "auto" looks at what the dense
model returns on the first batch: logits (a `logits` field, or a (batch, classes) tensor on labelled
data) -> classification; `last_hidden_state`, a (batch, tokens, width) tensor, or a (batch, width)
tensor on data without labels -> embeddings.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from structprune.data.batches import labelled_batch, split_batch, to_device
from structprune.data.running import call_model, eval_mode, model_device, model_logits
from structprune.recover.config import EpochRecord, RecoveryConfig
from structprune.recover.distributed import from_rank_zero
from structprune.recover.embeddings import EmbeddingLoss, ProjectedStudent, fit_projection, states_of, token_mask
from structprune.recover.losses import RecoveryLoss


def evaluate(model: nn.Module, loader: Iterable | None) -> tuple[float | None, float | None]:
    """(mean cross-entropy, accuracy in percent) of `model` in eval mode; (None, None) without data."""
    if loader is None:
        return None, None
    device, was_training, cross_entropy = model_device(model), model.training, RecoveryLoss()
    total = torch.zeros(3, dtype=torch.float64)
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                inputs, targets = to_device(labelled_batch(batch), device)
                logits = model_logits(model, inputs)
                total += batch_totals(logits, targets, cross_entropy(logits, targets))
    finally:
        model.train(was_training)
    return means(total)


def batch_totals(logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """[loss × samples, correct, samples] of one batch (float64, summed over batches and ranks)."""
    n = targets.shape[0]
    correct = (logits.argmax(dim=-1) == targets).sum()
    return torch.tensor([float(loss) * n, float(correct), float(n)], dtype=torch.float64)


def means(total: torch.Tensor, scale: float = 100.0) -> tuple[float | None, float | None]:
    """(mean loss, scale × mean metric) of summed totals; (None, None) when no sample was seen."""
    n = float(total[2])
    return (float(total[0]) / n, scale * float(total[1]) / n) if n else (None, None)


@dataclass(frozen=True, eq=False)
class ClassificationObjective:
    """Labels and logits: (1 − w)·CE + w·T²·KL towards the teacher's logits (CE alone without one)."""

    loss_fn: RecoveryLoss
    teacher: nn.Module | None = None
    metric: ClassVar[str] = "accuracy"

    @classmethod
    def for_config(cls, config: RecoveryConfig, teacher: nn.Module | None) -> ClassificationObjective:
        weight = config.distill_weight if teacher is not None else 0.0
        return cls(RecoveryLoss(config.label_smoothing, weight, config.temperature), teacher)

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def fingerprint(self) -> dict:
        return {}

    def loss_and_totals(self, training: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = to_device(labelled_batch(batch), model_device(training))
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = model_logits(self.teacher.eval(), inputs)
        logits = model_logits(training, inputs)
        loss = self.loss_fn(logits, targets, teacher_logits)
        return loss, batch_totals(logits.detach(), targets, loss.detach())

    def train_stats(self, total: torch.Tensor) -> dict:
        loss, accuracy = means(total)
        return {"train_loss": loss, "train_accuracy": accuracy}

    def evaluate(self, model: nn.Module, loader: Iterable | None) -> dict:
        loss, accuracy = evaluate(model, loader)
        return {"val_loss": loss, "val_accuracy": accuracy}

    def postfix(self, total: torch.Tensor, last: EpochRecord | None) -> tuple[dict, dict]:
        """The progress bar's running numbers, and the last epoch's validation result."""
        shown = {"loss": f"{total[0] / total[2]:.4f}", "acc": f"{100 * total[1] / total[2]:.2f}%"}
        return shown, ({} if last is None or last.val_accuracy is None else {"val_acc": f"{last.val_accuracy:.2f}%"})


@dataclass(frozen=True, eq=False)
class EmbeddingObjective:
    """The dense model's final states as targets, no labels (see `embeddings`); fidelity as metric.
    `projection` maps a narrower (or wider) student output to the teacher's width, else None."""

    teacher: nn.Module
    loss_fn: EmbeddingLoss
    projection: nn.Linear | None = None
    metric: ClassVar[str] = "fidelity"

    @classmethod
    def build(cls, config: RecoveryConfig, teacher: nn.Module, student: nn.Module,
              loader: Iterable) -> EmbeddingObjective:
        """The objective for `student`, with a least-squares projection when its width is not the teacher's."""
        loss_fn = EmbeddingLoss(config.pooled_cosine_weight, config.pooled_mse_weight, config.token_mse_weight)
        widths = _output_widths(student, teacher, loader)
        if widths[0] == widths[1]:
            return cls(teacher, loss_fn)
        state = from_rank_zero(lambda: _fitted_state(student, teacher, loader, config.seed))
        projection = nn.utils.skip_init(nn.Linear, *widths, device=model_device(student),
                                        dtype=state["weight"].dtype)
        projection.load_state_dict(state)
        return cls(teacher, loss_fn, projection)

    def wrap(self, model: nn.Module) -> nn.Module:
        return model if self.projection is None else ProjectedStudent(model, self.projection)

    def fingerprint(self) -> dict:
        loss = self.loss_fn
        return {"distill_target": "embeddings", "pooled_cosine_weight": loss.pooled_cosine,
                "pooled_mse_weight": loss.pooled_mse, "token_mse_weight": loss.token_mse,
                "projection": None if self.projection is None else [self.projection.in_features,
                                                                    self.projection.out_features]}

    def loss_and_totals(self, training: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = to_device(split_batch(batch)[0], model_device(training))
        with torch.no_grad():
            teacher_states = states_of(call_model(self.teacher.eval(), inputs))
        student_states = states_of(call_model(training, inputs))
        loss, cosines = self.loss_fn(student_states, teacher_states, token_mask(inputs, teacher_states))
        n = cosines.shape[0]
        return loss, torch.tensor([float(loss.detach()) * n, float(cosines.sum()), float(n)], dtype=torch.float64)

    def train_stats(self, total: torch.Tensor) -> dict:
        loss, fidelity = means(total, scale=1.0)
        return {"train_loss": loss, "train_accuracy": None, "train_fidelity": fidelity}

    def evaluate(self, model: nn.Module, loader: Iterable | None) -> dict:
        total = torch.zeros(3, dtype=torch.float64)
        with eval_mode(model), eval_mode(self.teacher), torch.no_grad():
            for batch in loader if loader is not None else ():
                total += self.loss_and_totals(model, batch)[1]
        loss, fidelity = means(total, scale=1.0)
        return {"val_loss": loss, "val_accuracy": None, "val_fidelity": fidelity}

    def postfix(self, total: torch.Tensor, last: EpochRecord | None) -> tuple[dict, dict]:
        shown = {"loss": f"{total[0] / total[2]:.4f}", "cos": f"{total[1] / total[2]:.4f}"}
        return shown, ({} if last is None or last.val_fidelity is None else {"val_cos": f"{last.val_fidelity:.4f}"})


def recovery_objective(config: RecoveryConfig, teacher: nn.Module | None, student: nn.Module, train_loader,
                       val_loader) -> ClassificationObjective | EmbeddingObjective:
    """The objective of a run: `config.distill_target`, with "auto" decided by the dense model's output
    on the first batch (logits without a teacher: fine-tuning and retraining need labels)."""
    target = config.distill_target
    if target == "auto":
        target = "logits" if teacher is None else output_kind(teacher, val_loader or train_loader)
    if target == "logits":
        return ClassificationObjective.for_config(config, teacher)
    if teacher is None:
        raise ValueError("recovery on embeddings (distill_target='embeddings') distils the dense model's final "
                         "states, without labels: use method='distill' (or 'auto') and pass dense=...")
    return EmbeddingObjective.build(config, teacher, student, train_loader)


def output_kind(model: nn.Module, loader: Iterable) -> str:
    """'logits' or 'embeddings': what `model` returns on the first batch of `loader` (see the module)."""
    batch = next(iter(loader), None)
    if batch is None:
        return "logits"
    inputs, labels = split_batch(batch)
    with eval_mode(model), torch.no_grad():
        output = call_model(model, to_device(inputs, model_device(model)))
    if _has_logits(output):
        return "logits"
    try:
        states = states_of(output)
    except TypeError:
        return "logits"  # the classification path names what the model returned
    has_states = getattr(output, "last_hidden_state", None) is not None or states.dim() == 3
    return "embeddings" if has_states or labels is None else "logits"


def _has_logits(output: Any) -> bool:
    if isinstance(getattr(output, "logits", None), torch.Tensor):
        return True
    return isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor)


def _fitted_state(student: nn.Module, teacher: nn.Module, loader: Iterable, seed: int) -> dict:
    """The least-squares projection's tensors (on the CPU, to send across ranks), fitted on batches drawn
    with the run's seed: a shuffled loader yields the same batches on every run, resumed or not."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return {k: v.cpu() for k, v in fit_projection(student, teacher, loader).state_dict().items()}


def _output_widths(student: nn.Module, teacher: nn.Module, loader: Iterable) -> tuple[int, int]:
    batch = next(iter(loader), None)
    if batch is None:
        raise ValueError("recovery on embeddings needs training data: the training loader yielded no batch")
    inputs = to_device(split_batch(batch)[0], model_device(student))
    with eval_mode(student), eval_mode(teacher), torch.no_grad():
        s, t = states_of(call_model(student, inputs)), states_of(call_model(teacher, inputs))
    if s.shape[:-1] != t.shape[:-1]:
        raise ValueError(f"the pruned model's final states {tuple(s.shape)} and the dense model's {tuple(t.shape)} "
                         "differ in more than their width; only the width may change")
    return s.shape[-1], t.shape[-1]
