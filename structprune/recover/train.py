"""The training loop shared by every recovery method: per-step LR from a closed-form schedule,
SGD/AdamW, optional teacher logits, dead-neuron metering, validation and a checkpoint each epoch."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from structprune.data.batches import labelled_batch, to_device
from structprune.data.running import model_device, model_logits
from structprune.recover.checkpoint import Checkpoint, checkpoint_path, load_checkpoint, restore, save_checkpoint
from structprune.recover.config import EpochRecord, RecoveryConfig
from structprune.recover.dead_neurons import DeadNeuronMeter
from structprune.recover.distributed import (
    all_reduce_sum,
    current_context,
    from_rank_zero,
    is_active,
    set_sampler_epoch,
    shard_loader,
    sync_buffers,
    wrap_for_training,
)
from structprune.recover.losses import RecoveryLoss
from structprune.recover.schedules import lr_at


@dataclass(frozen=True)
class TrainPlan:
    """What the loop runs: epochs, the schedule and its peak LR, extra schedule parameters, and the
    fingerprint of the run (for checkpoints)."""

    epochs: int
    schedule: str
    base_lr: float
    schedule_params: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))
    fingerprint: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))


def build_optimizer(model: nn.Module, config: RecoveryConfig, lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=config.momentum, nesterov=config.nesterov,
                           weight_decay=config.weight_decay)


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
                total += _batch_totals(logits, targets, cross_entropy(logits, targets))
    finally:
        model.train(was_training)
    return _means(total)


def _batch_totals(logits: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    n = targets.shape[0]
    correct = (logits.argmax(dim=-1) == targets).sum()
    return torch.tensor([float(loss) * n, float(correct), float(n)], dtype=torch.float64)


def _means(total: torch.Tensor) -> tuple[float | None, float | None]:
    n = float(total[2])
    return (float(total[0]) / n, 100.0 * float(total[1]) / n) if n else (None, None)


def train_epochs(model: nn.Module, train_loader, val_loader, config: RecoveryConfig, plan: TrainPlan, *,
                 teacher: nn.Module | None = None, desc: str = "recover") -> tuple[tuple[EpochRecord, ...], str | None]:
    """Train `model` in place for `plan.epochs` epochs (resuming from config.checkpoint_dir when asked);
    returns the per-epoch history and the checkpoint path (None without a checkpoint_dir)."""
    optimizer = build_optimizer(model, config, plan.base_lr)
    history = list(_resume(model, optimizer, config, plan))
    loader = shard_loader(train_loader, seed=config.seed)
    loss_fn = RecoveryLoss(config.label_smoothing, config.distill_weight if teacher is not None else 0.0,
                           config.temperature)
    run = _EpochRunner(model, wrap_for_training(model), optimizer, loss_fn, teacher, plan, config, len(loader))
    for epoch in range(len(history), plan.epochs):
        stats = run.train_one(loader, epoch, desc, history[-1].val_accuracy if history else None)
        sync_buffers(model)
        val_loss, val_accuracy = evaluate(model, val_loader)
        history.append(EpochRecord(epoch=epoch + 1, val_loss=val_loss, val_accuracy=val_accuracy, **stats))
        if config.checkpoint_dir:
            save_checkpoint(config.checkpoint_dir, Checkpoint(
                epoch + 1, model.state_dict(), optimizer.state_dict(), tuple(history), dict(plan.fingerprint)))
    return tuple(history), (str(checkpoint_path(config.checkpoint_dir)) if config.checkpoint_dir else None)


def _resume(model, optimizer, config: RecoveryConfig, plan: TrainPlan) -> tuple[EpochRecord, ...]:
    if not (config.resume and config.checkpoint_dir):
        return ()
    checkpoint = from_rank_zero(lambda: load_checkpoint(config.checkpoint_dir, dict(plan.fingerprint)))
    if checkpoint is None:
        return ()
    restore(model, optimizer, checkpoint)
    return checkpoint.history[:plan.epochs]


@dataclass(frozen=True, eq=False)
class _EpochRunner:
    model: nn.Module
    training: nn.Module          # the model itself, or DDP around it
    optimizer: torch.optim.Optimizer
    loss_fn: RecoveryLoss
    teacher: nn.Module | None
    plan: TrainPlan
    config: RecoveryConfig
    steps_per_epoch: int

    def train_one(self, loader, epoch: int, desc: str, last_val_accuracy: float | None = None) -> dict:
        """One epoch's training statistics, named as EpochRecord's fields. Its progress bar (on a
        terminal only) shows the running loss, accuracy and LR, and the last epoch's val accuracy."""
        self.model.train()
        total, lr, lr_max = torch.zeros(3, dtype=torch.float64), self.plan.base_lr, 0.0
        show = self.config.progress and current_context().is_main
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{self.plan.epochs}", disable=None if show else True, leave=False)
        last_val = {} if last_val_accuracy is None else {"val_acc": f"{last_val_accuracy:.2f}%"}
        _seed_epoch(self.config.seed, epoch, loader)  # after tqdm: wrapping a DataLoader draws from the RNG
        with DeadNeuronMeter(self.model) if self.config.measure_dead_rate else _NoMeter() as meter:
            for index, batch in enumerate(bar):
                lr = self._set_lr(epoch * self.steps_per_epoch + index)
                lr_max = max(lr_max, lr)
                total += self._step(batch)
                if show:
                    bar.set_postfix(loss=f"{total[0] / total[2]:.4f}", acc=f"{100 * total[1] / total[2]:.2f}%",
                                    lr=f"{lr:.2e}", **last_val)
        loss, acc = _means(all_reduce_sum(total))
        dead = meter.result(sum_across_ranks=is_active()) if self.config.measure_dead_rate else None
        return {"train_loss": loss, "train_accuracy": acc, "lr": lr, "lr_max": lr_max,
                "dead_rate": dead.total if dead else None, "dead_rate_per_layer": dict(dead.per_layer) if dead else {}}

    def _set_lr(self, step: int) -> float:
        lr = lr_at(self.plan.schedule, step, self.plan.epochs * self.steps_per_epoch, self.plan.base_lr,
                   **self.plan.schedule_params)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _step(self, batch) -> torch.Tensor:
        inputs, targets = to_device(labelled_batch(batch), model_device(self.model))
        teacher_logits = None
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = model_logits(self.teacher.eval(), inputs)
        logits = model_logits(self.training, inputs)
        loss = self.loss_fn(logits, targets, teacher_logits)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return _batch_totals(logits.detach(), targets, loss.detach())


class _NoMeter:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _seed_epoch(seed: int, epoch: int, loader) -> None:
    """Every epoch's randomness (shuffling, dropout, augmentation) depends only on (seed, epoch), so a
    resumed run replays exactly what an uninterrupted one would have done."""
    epoch_seed = seed * 1_000_003 + epoch
    torch.manual_seed(epoch_seed)
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(epoch_seed)
    set_sampler_epoch(loader, epoch)
