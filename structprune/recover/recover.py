"""recover(): fine-tune, distill, or retrain the pruned architecture from scratch (Scratch-E/B)."""
from __future__ import annotations

import copy
import math
from types import MappingProxyType

import torch
from torch import nn

from structprune.data.running import eval_mode
from structprune.recover.config import RecoveryConfig, RecoveryResult
from structprune.recover.distributed import shard_loader
from structprune.recover.objectives import recovery_objective
from structprune.recover.schedules import allr_initial_lr, relative_norm_drop
from structprune.recover.train import TrainPlan, train_epochs

SCRATCH_METHODS = ("scratch-e", "scratch-b")


def recover(pruned: nn.Module, train_loader, val_loader, config: RecoveryConfig, *, dense: nn.Module | None = None,
            dense_macs: int | None = None, pruned_macs: int | None = None,
            before_pruning: nn.Module | None = None, fraction_pruned: float | None = None) -> RecoveryResult:
    """Recover accuracy of a pruned model; the model passed in is not modified (a trained copy is returned).

    `dense` is the teacher for "distill" (and makes "auto" mean distill); `dense_macs`/`pruned_macs`
    set Scratch-B's epochs; `before_pruning` (default: `dense`) and `fraction_pruned` (default:
    1 − params after / params before) give ALLR its norm drop.

    >>> import torch, structprune
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> small = structprune.compress(net, torch.randn(2, 4), ratio=0.5).model
    >>> data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))), batch_size=16)
    >>> result = recover(small, data, data, RecoveryConfig(epochs=2, progress=False), dense=net)
    >>> result.method, result.epochs, len(result.history)
    ('distill', 2, 2)
    """
    method = resolve_method(config.method, dense)
    model = copy.deepcopy(pruned)
    teacher = dense if method in ("distill", "none") else None
    objective = recovery_objective(config, teacher, model, train_loader, val_loader)
    before = objective.evaluate(objective.wrap(model), val_loader)
    measured = {"metric": objective.metric, "initial_val_fidelity": before.get("val_fidelity")}
    if method == "none":
        return RecoveryResult(model, method, 0, (), config.schedule, config.lr, before["val_accuracy"], **measured)
    epochs, notes = recovery_epochs(method, config, dense_macs, pruned_macs)
    if method in SCRATCH_METHODS:
        notes["not_reinitialised"] = reinitialize(model, config.seed)
    if getattr(objective, "projection", None) is not None:
        notes["projection"] = _projection_note(objective.projection)
    plan = _train_plan(method, epochs, config, model, before_pruning or dense, fraction_pruned, train_loader, notes,
                       objective.fingerprint())
    with eval_mode(teacher):
        history, checkpoint = train_epochs(model, train_loader, val_loader, config, plan, desc=method,
                                           objective=objective)
    return RecoveryResult(model, method, epochs, history, plan.schedule, plan.base_lr, before["val_accuracy"],
                          checkpoint, MappingProxyType(notes), **measured)


def _projection_note(projection: nn.Linear) -> dict:
    return {"student_width": projection.in_features, "teacher_width": projection.out_features,
            "dropped_after_recovery": True}


def resolve_method(method: str, dense: nn.Module | None) -> str:
    """'auto' -> 'distill' when the dense model is at hand, else 'finetune'; distill needs the dense model."""
    if method == "auto":
        return "distill" if dense is not None else "finetune"
    if method == "distill" and dense is None:
        raise ValueError("recover(method='distill') needs the dense model as teacher: pass dense=...")
    return method


def recovery_epochs(method: str, config: RecoveryConfig, dense_macs: int | None,
                    pruned_macs: int | None) -> tuple[int, dict]:
    """Epochs a method trains for, and notes for the report (Scratch-B's compute factor)."""
    if method not in SCRATCH_METHODS:
        return config.epochs, {}
    if config.dense_epochs is None:
        raise ValueError(f"recover(method='{method}') needs RecoveryConfig.dense_epochs (the original training's "
                         "epochs): Scratch-E trains that long, Scratch-B scales it by the MACs saved")
    if method == "scratch-e":
        return config.dense_epochs, {}
    if not dense_macs or not pruned_macs:
        raise ValueError("recover(method='scratch-b') needs dense_macs= and pruned_macs= "
                         "(report.macs_before / report.macs_after)")
    factor = _scratch_b_factor(dense_macs, pruned_macs, config.scratch_b_max_factor)
    return scratch_b_epochs(config.dense_epochs, dense_macs, pruned_macs, config.scratch_b_max_factor), \
        {"scratch_b_factor": round(factor, 4)}


def scratch_b_epochs(dense_epochs: int, dense_macs: int, pruned_macs: int, max_factor: float | None = None) -> int:
    """Scratch-B (Liu et al., arXiv 1810.05270): the same compute as the dense training, i.e.
    round(dense_epochs × dense MACs / pruned MACs), the factor optionally capped (Liu et al. cap it at 2
    on ImageNet).

    >>> scratch_b_epochs(10, 400, 100), scratch_b_epochs(10, 400, 100, max_factor=2.0), scratch_b_epochs(3, 10, 7)
    (40, 20, 4)
    """
    factor = _scratch_b_factor(dense_macs, pruned_macs, max_factor)
    return max(1, int(math.floor(dense_epochs * factor + 0.5)))


def _scratch_b_factor(dense_macs: int, pruned_macs: int, max_factor: float | None) -> float:
    factor = dense_macs / pruned_macs
    return factor if max_factor is None else min(factor, max_factor)


def reinitialize(model: nn.Module, seed: int) -> list[str]:
    """Fresh initialisation of every module that has `reset_parameters` (seeded). Returns the parameters
    that kept their values because their owner has no initialiser (e.g. a raw class-token Parameter)."""
    torch.manual_seed(seed)
    reset: set[str] = set()
    for name, module in model.named_modules():
        if callable(getattr(module, "reset_parameters", None)):
            module.reset_parameters()
            reset |= {f"{name}.{p}" if name else p for p, _ in module.named_parameters(recurse=False)}
    return sorted(n for n, _ in model.named_parameters() if n not in reset)


def parameter_norm(model: nn.Module) -> float:
    return float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in model.parameters())))


def _train_plan(method, epochs, config: RecoveryConfig, model, reference, fraction, train_loader, notes,
                objective_fingerprint: dict) -> TrainPlan:
    schedule, base_lr, params = config.schedule, config.lr, {}
    if schedule in ("llr", "allr", "silo"):
        params["warmup"] = config.warmup
    if schedule == "allr":
        base_lr = _allr_lr(config, epochs, model, reference, fraction, notes)
    if schedule == "lrw":
        if config.dense_epochs is None:
            raise ValueError("schedule='lrw' replays the original schedule: set RecoveryConfig.dense_epochs")
        params = {"dense_total_steps": config.dense_epochs * len(shard_loader(train_loader, seed=config.seed)),
                  "dense_schedule": config.dense_schedule}
    fingerprint = {**config.fingerprint(), "resolved_method": method, "epochs": epochs, "base_lr": base_lr,
                   "schedule_params": dict(params), **objective_fingerprint}
    return TrainPlan(epochs, schedule, base_lr, MappingProxyType(params), MappingProxyType(fingerprint))


def _allr_lr(config: RecoveryConfig, epochs: int, model, reference, fraction, notes) -> float:
    if reference is None:
        raise ValueError("schedule='allr' scales the LR by the weight-norm drop pruning caused: pass the model "
                         "before pruning (dense= or before_pruning=)")
    if fraction is None:
        fraction = 1.0 - sum(p.numel() for p in model.parameters()) / sum(p.numel() for p in reference.parameters())
    before, after = parameter_norm(reference), parameter_norm(model)
    notes["allr"] = {"relative_norm_drop": relative_norm_drop(before, after), "fraction_pruned": fraction}
    return allr_initial_lr(config.lr, before, after, fraction_pruned=max(fraction, 1e-6), retrain_epochs=epochs,
                           dense_epochs=config.dense_epochs)
