"""The training loop shared by every recovery method and objective: per-step LR from a closed-form
schedule, SGD/AdamW, the objective's loss (labels and logits, or label-free embeddings), dead-neuron
metering, validation and a checkpoint each epoch."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

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
from structprune.recover.objectives import ClassificationObjective, EmbeddingObjective
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


def train_epochs(model: nn.Module, train_loader, val_loader, config: RecoveryConfig, plan: TrainPlan, *,
                 teacher: nn.Module | None = None, desc: str = "recover",
                 objective: ClassificationObjective | EmbeddingObjective | None = None,
                 ) -> tuple[tuple[EpochRecord, ...], str | None]:
    """Train `model` in place for `plan.epochs` epochs (resuming from config.checkpoint_dir when asked);
    returns the per-epoch history and the checkpoint path (None without a checkpoint_dir). `objective`
    defaults to labels and logits (with `teacher`'s logits distilled when given); what it trains is
    `objective.wrap(model)` (the model, or the model with a projection), which is also what the
    optimizer, the checkpoints and DDP hold."""
    objective = objective or ClassificationObjective.for_config(config, teacher)
    trainable = objective.wrap(model)
    optimizer = build_optimizer(trainable, config, plan.base_lr)
    history = list(_resume(trainable, optimizer, config, plan))
    loader = shard_loader(train_loader, seed=config.seed)
    training = wrap_for_training(trainable, find_unused=isinstance(objective, EmbeddingObjective))
    run = _EpochRunner(model, training, optimizer, objective, plan, config, len(loader))
    for epoch in range(len(history), plan.epochs):
        stats = run.train_one(loader, epoch, desc, history[-1] if history else None)
        sync_buffers(trainable)
        history.append(EpochRecord(epoch=epoch + 1, **objective.evaluate(trainable, val_loader), **stats))
        if config.checkpoint_dir:
            save_checkpoint(config.checkpoint_dir, Checkpoint(
                epoch + 1, trainable.state_dict(), optimizer.state_dict(), tuple(history), dict(plan.fingerprint)))
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
    training: nn.Module          # objective.wrap(model), or DDP around it
    optimizer: torch.optim.Optimizer
    objective: ClassificationObjective | EmbeddingObjective
    plan: TrainPlan
    config: RecoveryConfig
    steps_per_epoch: int

    def train_one(self, loader, epoch: int, desc: str, last: EpochRecord | None = None) -> dict:
        """One epoch's training statistics, named as EpochRecord's fields. Its progress bar (on a
        terminal only) shows the running loss and metric (accuracy, or cosine to the dense model), the
        LR, and the last epoch's validation metric."""
        train_mode(self.training, dropout=self.config.dropout)
        total, lr, lr_max = torch.zeros(3, dtype=torch.float64), self.plan.base_lr, 0.0
        show = self.config.progress and current_context().is_main
        bar = tqdm(loader, desc=f"{desc} {epoch + 1}/{self.plan.epochs}", disable=None if show else True, leave=False)
        _seed_epoch(self.config.seed, epoch, loader)  # after tqdm: wrapping a DataLoader draws from the RNG
        with DeadNeuronMeter(self.model) if self.config.measure_dead_rate else _NoMeter() as meter:
            for index, batch in enumerate(bar):
                lr = self._set_lr(epoch * self.steps_per_epoch + index)
                lr_max = max(lr_max, lr)
                total += self._step(batch)
                if show:
                    running, last_val = self.objective.postfix(total, last)
                    bar.set_postfix(**running, lr=f"{lr:.2e}", **last_val)
        dead = meter.result(sum_across_ranks=is_active()) if self.config.measure_dead_rate else None
        return {**self.objective.train_stats(all_reduce_sum(total)), "lr": lr, "lr_max": lr_max,
                "dead_rate": dead.total if dead else None, "dead_rate_per_layer": dict(dead.per_layer) if dead else {}}

    def _set_lr(self, step: int) -> float:
        lr = lr_at(self.plan.schedule, step, self.plan.epochs * self.steps_per_epoch, self.plan.base_lr,
                   **self.plan.schedule_params)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _step(self, batch) -> torch.Tensor:
        loss, totals = self.objective.loss_and_totals(self.training, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return totals


class _NoMeter:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def train_mode(model: nn.Module, *, dropout: bool = True) -> None:
    """`model.train()`; without dropout, eval mode for every module but those that keep running
    statistics (BatchNorm: they go on normalising by the batch and updating their averages)."""
    model.train()
    if dropout:
        return
    model.eval()
    for module in model.modules():
        if getattr(module, "track_running_stats", False):
            module.train()


def _seed_epoch(seed: int, epoch: int, loader) -> None:
    """Every epoch's randomness (shuffling, dropout, augmentation) depends only on (seed, epoch), so a
    resumed run replays exactly what an uninterrupted one would have done."""
    epoch_seed = seed * 1_000_003 + epoch
    torch.manual_seed(epoch_seed)
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        generator.manual_seed(epoch_seed)
    set_sampler_epoch(loader, epoch)
