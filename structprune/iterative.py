"""Iterative pruning: `cycles` × (prune a fraction p of what remains -> recover), each cycle with its
own LR schedule: SILO (max_lr on an S-curve of the fraction pruned so far), LR rewinding, ALLR (LLR
scaled by this cycle's weight-norm drop), or any fixed schedule. Each cycle's plan applies to the
previous cycle's pruned model. With a checkpoint_dir, every finished cycle is saved (plan + weights),
and a resumed run rebuilds finished cycles from their plans instead of recomputing them.

It sits above the API (each cycle is `compress`, a resumed one `apply_plan`) and uses recover/ for
the recovery, its schedules and its distributed helpers."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from torch import nn

from structprune.api import apply_plan, compress
from structprune.criteria import get_criterion
from structprune.recover.activate import ActivateWhilePruning
from structprune.recover.config import EpochRecord, RecoveryConfig, RecoveryResult
from structprune.recover.dead_neurons import dead_neuron_rate
from structprune.recover.distributed import AllReducedCriterion, barrier, from_rank_zero, is_active, is_main_process
from structprune.recover.recover import SCRATCH_METHODS, recover
from structprune.recover.schedules import silo_max_lr
from structprune.selection.plan import Plan


@dataclass(frozen=True)
class SiloParams:
    """SILO's S-curve: max_lr(c) = alpha / (1 + (P_c / (1 − P_c))^(−beta)) + offset (arXiv 2212.06144)."""

    alpha: float = 0.04
    beta: float = 5.0
    offset: float = 0.03


@dataclass(frozen=True, eq=False)
class CycleRecord:
    """One cycle: the fraction pruned before it (nominal P_c), its plan and report, its recovery, and
    the dead-neuron rate on the validation data right after pruning (before recovery)."""

    cycle: int
    pruned_before: float
    plan: Any
    report: Any
    recovery: RecoveryResult
    dead_rate_after_pruning: float | None

    def to_json(self) -> dict:
        return {"cycle": self.cycle, "pruned_before": self.pruned_before, "macs": self.report.macs_after,
                "params": self.report.params_after, "dead_rate_after_pruning": self.dead_rate_after_pruning,
                "recovery": self.recovery.to_json()}


@dataclass(frozen=True, eq=False)
class IterativeResult:
    """The final model, and per cycle its record (plans, reports, recovery histories)."""

    model: nn.Module
    cycles: tuple[CycleRecord, ...]

    @property
    def plans(self) -> tuple:
        return tuple(c.plan for c in self.cycles)

    @property
    def history(self) -> tuple[EpochRecord, ...]:
        return tuple(r for c in self.cycles for r in c.recovery.history)

    def to_json(self) -> dict:
        return {"cycles": [c.to_json() for c in self.cycles]}


def iterative_prune(model: nn.Module, example_inputs: Any, train_loader, val_loader, *, cycles: int, fraction: float,
                    criterion: Any = "l2", config: RecoveryConfig, compress_fn: Callable | None = None,
                    dense: nn.Module | None = None, ap_share: float | None = None, silo: SiloParams = SiloParams(),
                    compress_kwargs: Mapping[str, Any] = MappingProxyType({})) -> IterativeResult:
    """Prune `fraction` of every prunable group's remaining channels `cycles` times, recovering after each.

    `dense` (optional) is the distillation teacher for every cycle; `ap_share` turns on
    Activate-while-Pruning with that share; `compress_kwargs` go to every compress call.

    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> data = DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,))), batch_size=16)
    >>> cfg = RecoveryConfig(method="finetune", epochs=1, schedule="silo", progress=False)
    >>> out = iterative_prune(net, torch.randn(2, 4), data, data, cycles=2, fraction=0.25, config=cfg)
    >>> out.model[0].out_features, [round(c.recovery.base_lr, 4) for c in out.cycles]
    (9, [0.03, 0.0302])
    """
    if compress_fn is None:
        compress_fn = compress
    if config.method in SCRATCH_METHODS:
        raise ValueError("iterative pruning recovers the kept weights each cycle; use finetune or distill")
    criterion = ActivateWhilePruning(criterion, ap_share) if ap_share else criterion
    if is_active():  # every rank must derive the same plan from its own statistics
        criterion = AllReducedCriterion(get_criterion(criterion))
    records: list[CycleRecord] = []
    current = model
    for cycle in range(1, cycles + 1):
        saved = _load_cycle(config, cycle, current, example_inputs)
        record = saved or _run_cycle(current, example_inputs, train_loader, val_loader, cycle, fraction, criterion,
                                     config, compress_fn, dense, silo, compress_kwargs)
        if saved is None:
            _save_cycle(config, record)
        records.append(record)
        current = record.recovery.model
    return IterativeResult(current, tuple(records))


def _run_cycle(current, example_inputs, train_loader, val_loader, cycle, fraction, criterion, config, compress_fn,
               dense, silo, compress_kwargs) -> CycleRecord:
    pruned = compress_fn(current, example_inputs, ratio=fraction, criterion=criterion, data=train_loader,
                         **dict(compress_kwargs))
    dead = dead_neuron_rate(pruned.model, val_loader).total if val_loader is not None else None
    recovery = recover(pruned.model, train_loader, val_loader, cycle_config(config, cycle, fraction, silo),
                       dense=dense, before_pruning=current)
    return CycleRecord(cycle, pruned_fraction(cycle, fraction), pruned.plan, pruned.report, recovery, dead)


def pruned_fraction(cycle: int, fraction: float) -> float:
    """P_c = 1 − (1 − p)^(c − 1): the nominal fraction of channels gone when cycle c starts."""
    return 1.0 - (1.0 - fraction) ** (cycle - 1)


def cycle_config(config: RecoveryConfig, cycle: int, fraction: float,
                 silo: SiloParams = SiloParams()) -> RecoveryConfig:
    """This cycle's config: SILO's max_lr as lr, its own checkpoint folder and seed."""
    changes: dict[str, Any] = {"seed": config.seed + cycle - 1}
    if config.schedule == "silo":
        changes["lr"] = silo_max_lr(cycle, fraction, silo.alpha, silo.beta, silo.offset)
    if config.checkpoint_dir:
        changes["checkpoint_dir"] = str(Path(config.checkpoint_dir) / f"cycle-{cycle}")
    return dataclasses.replace(config, **changes)


def _cycle_file(config: RecoveryConfig, cycle: int) -> Path | None:
    return Path(config.checkpoint_dir) / f"cycle-{cycle}.done.pt" if config.checkpoint_dir else None


def _save_cycle(config: RecoveryConfig, record: CycleRecord) -> None:
    path = _cycle_file(config, record.cycle)
    if path is not None and is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        recovery = record.recovery.to_json()
        torch.save({"plan": record.plan.to_json(), "state": record.recovery.model.state_dict(), "report": record.report,
                    "recovery": recovery, "pruned_before": record.pruned_before,
                    "dead_rate_after_pruning": record.dead_rate_after_pruning}, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)
    barrier()


def _load_cycle(config: RecoveryConfig, cycle: int, current: nn.Module, example_inputs) -> CycleRecord | None:
    """A finished cycle from disk: re-apply its plan to `current`, then load its recovered weights."""
    path = _cycle_file(config, cycle)
    if path is None or not config.resume:
        return None
    data = from_rank_zero(lambda: torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None)
    if data is None:
        return None
    plan = Plan.from_json(data["plan"])
    model = apply_plan(current, example_inputs, plan, verify=False)
    model.load_state_dict(data["state"])
    return CycleRecord(cycle, data["pruned_before"], plan, data["report"], _recovery_from_json(model, data["recovery"]),
                       data["dead_rate_after_pruning"])


def _recovery_from_json(model: nn.Module, data: dict) -> RecoveryResult:
    history = tuple(EpochRecord(**r) for r in data["history"])
    return RecoveryResult(model, data["method"], data["epochs"], history, data["schedule"], data["base_lr"],
                          data["val_accuracy_before"], data["checkpoint"], MappingProxyType(data["notes"]))
