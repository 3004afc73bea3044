"""Learning-rate schedules as pure functions of the step: `lr_at(schedule, step, total_steps, base_lr)`.

Notation: `s` is the 0-based optimizer step, `T` the number of steps of this run, `η` the base LR and
`w = floor(warmup * T)` the warm-up steps. Every schedule is a closed form, so tests check each curve
against its formula and a resumed run recomputes the LR of any step without scheduler state.

- constant: η.
- cosine: η_min + (η − η_min)·(1 + cos(π s / T)) / 2 (torch's CosineAnnealingLR with T_max = T).
- onecycle: Smith & Topin's one-cycle exactly as torch's OneCycleLR (cosine annealing): from
  η/div_factor up to η over the first pct_start·T − 1 steps, then down to η/(div_factor·final_div_factor).
- step: η·γ^k, k = number of milestones (fractions of T) already passed — the classic 50%/75% ×0.1.
- llr (Zimmer et al., arXiv 2111.00843, "linear learning-rate restarting"): η·(s+1)/w during the
  warm-up (w = 10% of T), then η·(T − s)/(T − w), reaching 0 at s = T.
- allr: the same curve as llr; only its η differs (see `allr_initial_lr`).
- lrw (Renda et al., arXiv 2003.02389, "learning-rate rewinding"): replay the last T steps of the
  original training schedule: lr_at(dense_schedule, D − T + s, D, η) with D = dense_total_steps.
- silo (Liu et al., arXiv 2212.06144): within a cycle, linear warm-up to η = max_lr over w steps, then
  step decay (×0.1 at 50% and 75% of the cycle); across cycles η follows `silo_max_lr`.
"""
from __future__ import annotations

import math
from types import MappingProxyType
from typing import Callable, Sequence

DEFAULT_WARMUP = 0.1
DEFAULT_MILESTONES = (0.5, 0.75)


def constant_lr(step: int, total: int, base_lr: float) -> float:
    return base_lr


def cosine_lr(step: int, total: int, base_lr: float, *, eta_min: float = 0.0) -> float:
    return eta_min + (base_lr - eta_min) * (1.0 + math.cos(math.pi * step / total)) / 2.0


def step_lr(step: int, total: int, base_lr: float, *, milestones: Sequence[float] = DEFAULT_MILESTONES,
            gamma: float = 0.1) -> float:
    passed = sum(1 for m in milestones if step >= int(m * total))
    return base_lr * gamma ** passed


def onecycle_lr(step: int, total: int, base_lr: float, *, pct_start: float = 0.3, div_factor: float = 25.0,
                final_div_factor: float = 1e4) -> float:
    """Same numbers as torch.optim.lr_scheduler.OneCycleLR(max_lr=base_lr, total_steps=total)."""
    initial = base_lr / div_factor
    final = initial / final_div_factor
    peak_step = float(pct_start * total) - 1
    if step <= peak_step:
        return _cos_anneal(initial, base_lr, step / peak_step if peak_step > 0 else 1.0)
    return _cos_anneal(base_lr, final, (step - peak_step) / (total - 1 - peak_step))


def _cos_anneal(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * min(pct, 1.0)) + 1)


def linear_restart_lr(step: int, total: int, base_lr: float, *, warmup: float = DEFAULT_WARMUP) -> float:
    """LLR: linear warm-up over `warmup`·T steps to base_lr, then linear decay to 0 at step T."""
    w = int(warmup * total)
    if step < w:
        return base_lr * (step + 1) / w
    return base_lr * (total - step) / (total - w)


def silo_cycle_lr(step: int, total: int, base_lr: float, *, warmup: float = DEFAULT_WARMUP,
                  milestones: Sequence[float] = DEFAULT_MILESTONES, gamma: float = 0.1) -> float:
    """One SILO cycle: linear warm-up to base_lr (= that cycle's max_lr), then step decay."""
    w = int(warmup * total)
    if step < w:
        return base_lr * (step + 1) / w
    return step_lr(step, total, base_lr, milestones=milestones, gamma=gamma)


def rewind_lr(step: int, total: int, base_lr: float, *, dense_total_steps: int,
              dense_schedule: str = "cosine", **dense_params) -> float:
    """LRW: the original schedule's LR at the same position counted from its end."""
    start = max(dense_total_steps - total, 0)
    position = min(start + step, dense_total_steps - 1)
    return lr_at(dense_schedule, position, dense_total_steps, base_lr, **dense_params)


SCHEDULES: MappingProxyType[str, Callable[..., float]] = MappingProxyType({
    "constant": constant_lr,
    "cosine": cosine_lr,
    "onecycle": onecycle_lr,
    "step": step_lr,
    "llr": linear_restart_lr,
    "allr": linear_restart_lr,
    "lrw": rewind_lr,
    "silo": silo_cycle_lr,
})


def lr_at(schedule: str, step: int, total_steps: int, base_lr: float, **params) -> float:
    """The learning rate of `schedule` at 0-based `step` of a run of `total_steps` steps.

    >>> lr_at("cosine", 0, 100, 0.1), lr_at("cosine", 50, 100, 0.1)
    (0.1, 0.05)
    >>> round(lr_at("llr", 9, 100, 0.1), 6), round(lr_at("llr", 55, 100, 0.1), 6)
    (0.1, 0.05)
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown LR schedule '{schedule}'; choose one of: {', '.join(sorted(SCHEDULES))}")
    if total_steps < 1 or not 0 <= step < total_steps:
        raise ValueError(f"step {step} is outside a run of {total_steps} steps")
    return float(SCHEDULES[schedule](step, total_steps, base_lr, **params))


def silo_max_lr(cycle: int, p: float = 0.2, alpha: float = 0.04, beta: float = 5.0, offset: float = 0.03) -> float:
    """SILO's max_lr of 1-based pruning `cycle`: α / (1 + (P / (1 − P))^(−β)) + offset, where
    P = 1 − (1 − p)^(cycle − 1) is the fraction already pruned when the cycle starts (P = 0 -> offset).

    >>> silo_max_lr(1), round(silo_max_lr(30), 4)
    (0.03, 0.07)
    """
    if cycle < 1 or not 0.0 < p < 1.0:
        raise ValueError(f"SILO needs cycle >= 1 and 0 < p < 1, got cycle={cycle}, p={p}")
    pruned = 1.0 - (1.0 - p) ** (cycle - 1)
    if pruned <= 0.0:
        return offset
    return alpha / (1.0 + (pruned / (1.0 - pruned)) ** (-beta)) + offset


def relative_norm_drop(norm_before: float, norm_after: float) -> float:
    """d = sqrt(|‖W‖² − ‖W_pruned‖²|) / ‖W‖: the part of the weight norm that pruning removed."""
    if norm_before <= 0:
        return 0.0
    return math.sqrt(abs(norm_before ** 2 - norm_after ** 2)) / norm_before


def allr_initial_lr(base_lr: float, norm_before: float, norm_after: float, *, fraction_pruned: float = 1.0,
                    retrain_epochs: int | None = None, dense_epochs: int | None = None) -> float:
    """ALLR's initial (post-warm-up) LR (Zimmer et al., arXiv 2111.00843, as in their BIMP code):
    η = clip(d / sqrt(f) · η₀, [min(E_retrain / E_dense, 1) · η₀, η₀]) with d = `relative_norm_drop`,
    f = fraction of weights this pruning step removed, η₀ = the largest LR of the original training.
    The lower clip applies only when both epoch counts are given.

    >>> allr_initial_lr(0.1, 10.0, 8.0, fraction_pruned=0.36)
    0.1
    >>> round(allr_initial_lr(0.1, 10.0, 9.8, fraction_pruned=0.5), 4)
    0.0281
    """
    if not 0.0 < fraction_pruned <= 1.0:
        raise ValueError(f"fraction_pruned must be in (0, 1], got {fraction_pruned}")
    scaled = relative_norm_drop(norm_before, norm_after) / math.sqrt(fraction_pruned) * base_lr
    floor = 0.0
    if retrain_epochs is not None and dense_epochs:
        floor = min(retrain_epochs / dense_epochs, 1.0) * base_lr
    return float(min(max(scaled, floor), base_lr))
