"""Activate-while-Pruning (AP; Liu, Ghosh, Tan & Motani, arXiv 2212.06145), adapted to channels.

As published (abstract), AP is not a criterion of its own: it runs alongside a pruning method during
iterative pruning and lowers the dynamic dead-neuron rate (DNR, see `dead_neurons`) by acting on
individual units/weights. The paper's exact per-weight selection rule was not available to us, so
everything below is our channel-level design, not a port of the paper's rule:

1. Unit -> channel. A channel's dead rate r_c is the fraction of its post-ReLU units (samples ×
   spatial positions) that are exactly zero, measured where the channel is *consumed*: at the inputs
   of the group's consumer layers (Conv/Linear members with role 'in'), in eval mode, on the
   calibration data. Consumers whose input is ever negative (not post-ReLU) are ignored; channels
   without a measurement get r_c = 0 and are never chosen by AP.
2. Which channels. With z_c zeros among n_c units, removing channel c lowers the group's DNR exactly
   when its own rate is above the group's — (Σz − z_c)/(Σn − n_c) < Σz/Σn ⇔ z_c/n_c > Σz/Σn — and
   lowers it most for the largest r_c. So the candidates are the channels with r_c above the group
   mean (and > 0), deadest first.
3. Budget. In each group, k = ceil(share × size) channels (share = 2% by default, at most size − 1)
   are moved below every other channel's score, so the selector drops them first; the rest of the
   cycle's budget follows the base criterion unchanged. With small groups the ceil makes AP spend one
   channel per group and cycle, which is more than 2% of that group — a consequence of channel
   granularity, reported as such.

Register it like any criterion: `compress(..., criterion=ActivateWhilePruning("l2"), data=loader)`.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np
import torch
from torch import nn

from structprune.criteria import get_criterion
from structprune.criteria.base import GroupView, ScoringContext
from structprune.data.running import forward_inputs

AP_DEFAULT_SHARE = 0.02
_CONSUMERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class _ChannelCount:
    zeros: torch.Tensor
    elements: torch.Tensor
    saw_negative: bool = False


def _channel_dim(module: nn.Module, x: torch.Tensor) -> int:
    return x.dim() - 1 if isinstance(module, nn.Linear) else 1


@contextmanager
def _consumer_hooks(model: nn.Module, names: set[str]) -> Iterator[dict[str, _ChannelCount]]:
    """Count zeros per input channel of the named consumer modules; hooks removed on exit."""
    counts: dict[str, _ChannelCount] = {}
    modules = dict(model.named_modules())

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            dim = _channel_dim(module, x)
            rest = [d for d in range(x.dim()) if d != dim]
            count = counts.setdefault(name, _ChannelCount(torch.zeros(x.shape[dim]), torch.zeros(x.shape[dim])))
            count.zeros += (x == 0).sum(dim=rest).float().cpu()
            count.elements += x.numel() / x.shape[dim]
            count.saw_negative = count.saw_negative or bool((x < 0).any())
        return hook

    handles = [modules[n].register_forward_pre_hook(make_hook(n)) for n in sorted(names)
               if isinstance(modules.get(n), _CONSUMERS)]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


def _consumer_name(fqn: str) -> str | None:
    owner, _, param = fqn.rpartition(".")
    return owner if param == "weight" and owner else None


def channel_dead_rates(model: nn.Module, loader, groups: list[GroupView], *,
                       max_batches: int | None = None) -> dict[str, np.ndarray]:
    """Per group, the dead rate of each channel at its consumers' inputs (0 where not measurable)."""
    consumers = {_consumer_name(m.fqn) for g in groups for m in g.members if m.role == "in"} - {None}
    with _consumer_hooks(model, consumers) as counts:
        forward_inputs(model, loader, max_batches)
    return {g.group_id: _group_rates(g, counts) for g in groups}


def _group_rates(group: GroupView, counts: Mapping[str, _ChannelCount]) -> np.ndarray:
    zeros, elements = np.zeros(group.size), np.zeros(group.size)
    for member in group.members:
        count = counts.get(_consumer_name(member.fqn) or "") if member.role == "in" else None
        if count is None or count.saw_negative or len(count.zeros) != len(member.positions):
            continue
        zeros += member.per_channel(count.zeros, group.size)
        elements += member.per_channel(count.elements, group.size)
    return np.divide(zeros, elements, out=np.zeros(group.size), where=elements > 0)


def ap_scores(base_scores: Mapping[str, np.ndarray], dead_rates: Mapping[str, np.ndarray],
              share: float = AP_DEFAULT_SHARE) -> dict[str, np.ndarray]:
    """Base scores with, per group, the ceil(share × size) deadest above-mean channels moved below all
    others (deadest lowest), so that selection spends that part of the budget on them.

    >>> scores = ap_scores({"g": np.array([5.0, 1.0, 3.0, 4.0])}, {"g": np.array([0.9, 0.0, 0.1, 0.2])}, 0.25)
    >>> [int(i) for i in np.argsort(scores["g"])]   # channel 0 (90% dead) now goes first, then the base order
    [0, 1, 2, 3]
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"AP share must be in [0, 1), got {share}")
    return {gid: _move_deadest_down(np.asarray(s, dtype=np.float64), np.asarray(dead_rates.get(gid, 0.0 * s)), share)
            for gid, s in base_scores.items()}


def _move_deadest_down(scores: np.ndarray, rates: np.ndarray, share: float) -> np.ndarray:
    k = min(math.ceil(share * scores.size), scores.size - 1) if share > 0 else 0
    candidates = np.flatnonzero((rates > rates.mean()) & (rates > 0))
    chosen = candidates[np.argsort(-rates[candidates], kind="stable")][:k]
    if chosen.size == 0:
        return scores
    out = scores.copy()
    floor = float(scores.min()) - 1.0 - abs(float(scores.min()))
    out[chosen] = floor - rates[chosen]
    return out


@dataclass(frozen=True)
class ActivateWhilePruning:
    """A criterion: the base criterion's scores, with `share` of each group's channels spent on the
    deadest ones (see the module docstring for exactly what was adapted from the paper)."""

    base: object = "l2"
    share: float = AP_DEFAULT_SHARE
    max_batches: int | None = None

    @property
    def name(self) -> str:
        return f"ap+{get_criterion(self.base).name}"

    @property
    def needs_data(self) -> bool:
        return True

    def score(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, np.ndarray]:
        base = get_criterion(self.base).score(groups, ctx)
        rates = channel_dead_rates(ctx.model, ctx.data, groups, max_batches=self.max_batches)
        return ap_scores(base, rates, self.share)
