"""Torch-Pruning's criteria as reference lines: the same dense model, MACs targets, calibration and
recovery budget. torch_pruning is optional (`pip install torch-pruning`, the `reference` extra): without
it `reference_available()` says why and the sweep omits these lines with a note.

Torch-Pruning prunes with its MetaPruner at one ratio for every layer (its default, uniform); the ratio
of each MACs target is found once by bisection (MACs counted with structprune's counter on the pruned
model, as for structprune's points) and shared by both importances. The module whose output is the
model's output (the classifier) is left whole, as structprune leaves output channels. BatchNorm
statistics are re-estimated on the calibration data, as `compress` does for structprune's points.
"""
from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from structprune.calibrate import recalibrate_batchnorm
from structprune.data.running import call_model, eval_mode, forward_hooks, model_logits
from structprune.graph.cost import count_macs, count_params
from structprune.sweep.config import SweepConfig
from structprune.sweep.points import Dense, Point, Pruned, measured_row, recovered_accuracy
from structprune.sweep.rows import failed_row
from structprune.sweep.selecting import FALLBACK_TOLERANCE

BISECTION_STEPS = 12
MAX_RATIO = 0.95


def reference_available() -> str:
    """'' when torch_pruning can be imported, else the note the sweep prints and writes instead of its lines."""
    try:
        import torch_pruning  # noqa: F401 - optional: only whether it imports
    except ImportError:
        return ("Torch-Pruning reference lines omitted: torch_pruning is not installed "
                "(pip install torch-pruning, or the 'reference' extra)")
    return ""


def reference_ratios(dense: Dense, reductions: tuple[float, ...], round_to: int = 1) -> dict[float, float]:
    """The uniform Torch-Pruning ratio of each MACs reduction: bisection to dense MACs / reduction, then the
    closer of the two ratios around it."""
    macs_at = _macs_at_ratio(dense, round_to)
    return {reduction: _bisect(macs_at, dense.macs / reduction) for reduction in reductions}


def prune_reference_point(dense: Dense, criterion: str, ratio: float, point: Point, config: SweepConfig) -> Pruned:
    """One reference point: Torch-Pruning's `criterion` ('tp_l2' or 'tp_random') at the uniform `ratio`,
    BatchNorm re-estimated, then the sweep's recovery budget; checked by output shapes."""
    start = time.perf_counter()
    torch.manual_seed(dense.seed)  # random importance draws from torch's generator
    try:
        pruned = tp_prune(dense.model, dense.example_inputs, criterion, ratio, config.round_to)
    except (RuntimeError, ValueError, KeyError, IndexError) as exc:  # Torch-Pruning's own failures
        return Pruned(failed_row("torch-pruning", criterion, dense.seed, point.index, point.reduction,
                                 (dense.macs, dense.params), dense.accuracy, "shapes", time.perf_counter() - start,
                                 f"Torch-Pruning failed: {type(exc).__name__}: {exc}"), None)
    pruned_macs = count_macs(pruned, dense.example_inputs)
    reached = dense.macs / max(pruned_macs, 1)
    if abs(reached - point.reduction) > FALLBACK_TOLERANCE * point.reduction:  # never a row off its target
        rounding = f" with round_to={config.round_to}" if config.round_to > 1 else ""
        return Pruned(failed_row("torch-pruning", criterion, dense.seed, point.index, point.reduction,
                                 (dense.macs, dense.params), dense.accuracy, "shapes", time.perf_counter() - start,
                                 f"Torch-Pruning's closest uniform ratio{rounding} ({ratio:.3f}) gives "
                                 f"{reached:.2f}x fewer MACs, not {point.reduction:g}x (within 10%)"), None)
    recalibrate_batchnorm(pruned, point.calibration)
    verified = runs_like_dense(pruned, dense, point)
    accuracy = recovered_accuracy(pruned, dense, point.bundle, config)
    after = (pruned_macs, count_params(pruned))  # recalibration and recovery never change the widths
    return Pruned(measured_row("torch-pruning", criterion, dense, point, after, accuracy, verified, "shapes",
                               time.perf_counter() - start), pruned)


def tp_prune(model: nn.Module, example_inputs: Any, criterion: str, ratio: float, round_to: int = 1) -> nn.Module:
    """A pruned deep copy of `model` by Torch-Pruning's MetaPruner at the uniform `ratio` (its `round_to`: kept
    channel counts a multiple of it)."""
    import torch_pruning as tp  # optional: the reference lines only

    pruned = copy.deepcopy(model).eval()
    importance = {"tp_l2": lambda: tp.importance.MagnitudeImportance(p=2),
                  "tp_random": tp.importance.RandomImportance}[criterion]()
    pruner = tp.pruner.MetaPruner(pruned, example_inputs, importance=importance, pruning_ratio=ratio,
                                  ignored_layers=output_modules(pruned, example_inputs),
                                  round_to=round_to if round_to > 1 else None)
    pruner.step()
    return pruned


def output_modules(model: nn.Module, example_inputs: Any) -> list[nn.Module]:
    """The leaf modules whose output tensor is the model's output (the classifier): kept whole."""
    produced: dict[int, nn.Module] = {}
    leaves = {name: module for name, module in model.named_modules() if name and not list(module.children())}

    def remember(module, args, output):
        produced[id(output)] = module

    with forward_hooks(model, post={name: remember for name in leaves}), eval_mode(model), torch.no_grad():
        output = model_logits(model, example_inputs)
    return [produced[id(output)]] if id(output) in produced else []


def runs_like_dense(pruned: nn.Module, dense: Dense, point: Point) -> bool:
    """The check of a Torch-Pruning point: outputs at two batch sizes have the dense model's shape."""
    inputs = next(iter(point.bundle.val))[0]
    with eval_mode(pruned), eval_mode(dense.model), torch.no_grad():
        for size in (1, 3):
            batch = inputs[:size]
            if call_model(pruned, batch).shape != call_model(dense.model, batch).shape:
                return False
    return True


def _macs_at_ratio(dense: Dense, round_to: int) -> Callable[[float], int]:
    @functools.cache  # the bisection's final comparison asks again for the two ratios it last measured
    def macs_at(ratio: float) -> int:
        return count_macs(tp_prune(dense.model, dense.example_inputs, "tp_l2", ratio, round_to), dense.example_inputs)

    return macs_at


def _bisect(macs_at: Callable[[float], int], budget: float) -> float:
    """The uniform ratio whose MACs come closest to `budget` (by ratio): MACs fall in steps as whole channels
    go, so the two ratios either side of the budget are compared."""
    low, high = 0.0, MAX_RATIO
    for _ in range(BISECTION_STEPS):
        middle = 0.5 * (low + high)
        low, high = (low, middle) if macs_at(middle) <= budget else (middle, high)
    return min((low, high), key=lambda ratio: abs(math.log(max(macs_at(ratio), 1) / budget)))
