"""i-SpaSP (Wolfe & Kyrillidis, "i-SpaSP: Structured Neural Pruning via Sparse Signal Recovery",
L4DC 2022; arXiv 2112.04905).

Paper (Algorithm 1, a CoSaMP-style sparse recovery of the hidden layer): for a two-layer block with
hidden map H and a linear consumer B, keep s neurons. Start with S = {} ; for T iterations: the
residual V = B(H) - B_S(H_S); importance = the gradient of 1/2 ||V||^2 with respect to H, summed
over each neuron's positions (samples, and spatial positions for conv); Omega = the 2s most
important; T = Omega u S; S = the s neurons of T with the largest aggregate activation sum(H).
Multi-layer networks are pruned block by block from input to output, each block fed by the already
pruned network (the authors' code: `prune_basic_block` per ResNet block).

Our adaptation: a block is a channel group; H is the group's signal at its consumers' inputs
(captured with earlier groups' dropped channels zeroed, i.e. fed by the already-pruned network); B
is each consumer layer plus the normalisation right after it, checked to be affine; with several
consumers (residual streams) the residual is the sum over consumers. We write B_S(H_S) = B(H * 1_S)
so V carries no bias term at S = {} (the authors' code uses B(H) with its bias there). We stop
early once S no longer changes, and we do not take an update that would increase ||V||^2 (the
paper's merge by activation mass is not a descent step; without this guard the residual can rise
between iterations). Note: when 2s >= the group size, Omega u S is the whole group and the
selection is the activation-mass top-s (the gradient step only matters below a 50% keep ratio).
Padded tokens (a dict batch's `attention_mask`) are zeroed in the held hidden map, so they add
nothing to the residual, its gradient or the activation mass.
The calibration set (default 1280 samples) is held as the group's hidden map, one group at a time
(at most `max_hidden_mb`), and processed in the loader's chunks. Groups whose consumers are not
affine or not observable fall back to the L1-magnitude ranking.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from structprune.criteria.activations import load_batches, with_fallback
from structprune.criteria.base import GroupView, ScoringContext, Selection
from structprune.criteria.consumers import Consumer, consumers, is_affine
from structprune.criteria.taps import (
    Padding,
    Tap,
    as_samples,
    consumer_taps,
    masked_channels,
    observe_inputs,
    taps_by_group,
    to_channels,
)
from structprune.data.running import call_order, eval_mode


@dataclass(frozen=True, eq=False)
class Block:
    """One group's hidden maps (one list of chunks per tap) and consumer functions."""

    group: GroupView
    taps: list[Tap]
    hidden: list[list[torch.Tensor]]
    fns: list[Consumer]
    mass: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class ISpaSP:
    """i-SpaSP selection (see module docstring); `score` runs it at `keep_fraction`."""

    name: str = "ispasp"
    iterations: int = 20
    max_samples: int | None = 1280
    keep_fraction: float = 0.5
    max_hidden_mb: float = 512.0
    needs_data: bool = True
    needs_labels: bool = False
    description: str = "i-SpaSP sparse-recovery selection (Wolfe & Kyrillidis 2022)"

    def score(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, np.ndarray]:
        """Scores whose top-k at k = ceil(keep_fraction * size) is the i-SpaSP selection."""
        counts = {g.group_id: max(1, math.ceil(self.keep_fraction * g.size)) for g in groups}
        return self._run(groups, ctx, counts)[1]

    def select(self, groups: list[GroupView], ctx: ScoringContext, keep_counts: Mapping[str, int]) -> Selection:
        counts = {g.group_id: int(keep_counts.get(g.group_id, g.size)) for g in groups}
        keep = self._run(groups, ctx, counts)[0]
        return Selection({gid: tuple(sorted(s)) for gid, s in keep.items()}, {})

    def _run(self, groups, ctx, counts):
        batches = load_batches(ctx, self.max_samples, self.name)
        taps = consumer_taps(groups, ctx.model)
        by_group = taps_by_group(taps)
        keep, scores, dropped = {}, {}, {}
        with eval_mode(ctx.model):
            for group in _forward_order(groups, by_group, ctx.model, batches[0].x):
                block = capture_block(ctx.model, group, by_group.get(group.group_id, []), batches,
                                      all_taps=taps, dropped=dropped, max_mb=self.max_hidden_mb)
                s = min(counts[group.group_id], group.size)
                chosen, imp = select_block(block, s, self.iterations)[:2] if block else _by_magnitude(group, s)
                keep[group.group_id], scores[group.group_id] = chosen, _scores(group.size, chosen, imp)
                gone = np.ones(group.size, dtype=bool)
                gone[list(chosen)] = False
                dropped[group.group_id] = gone
        return keep, scores


def select_block(block: Block, s: int, iterations: int) -> tuple[set[int], np.ndarray, list[float]]:
    """i-SpaSP on one block: (kept channels, last importance, residual ||V||^2 of the kept set after
    each iteration). An update that would increase the residual is not taken (the iteration stops),
    so the residual never rises above the first iterate's."""
    chosen: set[int] = set()
    importance, history = np.zeros(block.group.size), []
    for _ in range(iterations):
        importance, _ = _importance(block, chosen)
        merged = set(np.argsort(-importance, kind="stable")[: 2 * s].tolist()) | chosen
        new = set(sorted(merged, key=lambda c: (-block.mass[c], c))[:s])
        energy = residual(block, new)
        if new == chosen or (history and energy > history[-1]):
            break
        chosen = new
        history.append(energy)
    return chosen, importance, history


def residual(block: Block, chosen: set[int]) -> float:
    """||B(H) - B(H_S)||^2 summed over the block's consumers and calibration chunks."""
    return _importance(block, chosen, need_grad=False)[1]


def _importance(block: Block, chosen: set[int], need_grad: bool = True) -> tuple[np.ndarray, float]:
    total, energy = np.zeros(block.group.size), 0.0
    for tap, chunks, fn in zip(block.taps, block.hidden, block.fns):
        keep = _position_mask(tap, chosen)
        for h in chunks:
            h = h.detach().requires_grad_(need_grad)
            with torch.no_grad():
                part = fn(h * _shaped(keep, h, tap))
            with torch.enable_grad() if need_grad else torch.no_grad():
                diff = fn(h) - part
                loss = 0.5 * (diff * diff).sum()
            energy += 2.0 * float(loss.detach())
            if need_grad:
                grad = torch.autograd.grad(loss, h)[0]
                per_position = as_samples(grad, tap.channel_dim).sum(dim=(0, 1)).double().cpu().numpy()
                total += to_channels(per_position, tap.positions, tap.size, how="sum")
    return total, energy


def _position_mask(tap: Tap, chosen: set[int]) -> torch.Tensor:
    kept = np.zeros(tap.size, dtype=bool)
    kept[list(chosen)] = True
    return torch.as_tensor(np.where(tap.positions >= 0, kept[np.maximum(tap.positions, 0)], True))


def _shaped(mask: torch.Tensor, h: torch.Tensor, tap: Tap) -> torch.Tensor:
    shape = [1] * h.ndim
    shape[tap.channel_dim] = len(mask)
    return mask.to(dtype=h.dtype, device=h.device).reshape(shape)


def capture_block(model, group: GroupView, taps: list[Tap], batches, *, all_taps: list[Tap] | None = None,
                  dropped: Mapping[str, np.ndarray] | None = None, max_mb: float = 512.0) -> Block | None:
    """The group's consumer inputs over the calibration chunks (earlier groups' `dropped` channels
    zeroed, i.e. fed by the already-pruned network), or None if no consumer is affine."""
    if not taps:
        return None
    fns = consumers(model, [t.module for t in taps], batches[0].x)
    hidden: list[list[torch.Tensor]] = [[] for _ in taps]
    budget = [max_mb * 2**20]
    padding = Padding()

    def see(tap, x):
        i = taps.index(tap)
        if budget[0] > 0:
            hidden[i].append(padding.zeroed(tap, x.detach()).clone())
            budget[0] -= x.numel() * x.element_size()

    with masked_channels(model, all_taps or taps, dropped or {}), observe_inputs(model, taps, see), \
            torch.no_grad():
        for batch in batches:
            if budget[0] <= 0:
                break
            padding.run(model, batch.x)
    usable = [i for i, t in enumerate(taps) if hidden[i] and is_affine(fns[t.module], hidden[i][0])]
    if not usable:
        return None
    taps, hidden = [taps[i] for i in usable], [hidden[i] for i in usable]
    return Block(group, taps, hidden, [fns[t.module] for t in taps], _mass(taps, hidden))


def _mass(taps, hidden) -> np.ndarray:
    per_tap = []
    for tap, chunks in zip(taps, hidden):
        per_position = sum(as_samples(h, tap.channel_dim).abs().sum(dim=(0, 1)).double() for h in chunks)
        per_tap.append(to_channels(per_position.cpu().numpy(), tap.positions, tap.size, how="sum"))
    return np.mean(per_tap, axis=0)


def _by_magnitude(group: GroupView, s: int) -> tuple[set[int], np.ndarray]:
    """Fallback for groups without a usable affine consumer: the L1 magnitude ranking."""
    scores = with_fallback([group], {})[group.group_id]
    return set(np.argsort(-scores, kind="stable")[:s].tolist()), scores


def _scores(size: int, chosen: set[int], importance: np.ndarray) -> np.ndarray:
    """Kept channels above every dropped one; inside each part, ordered by importance rank."""
    rank = np.empty(size)
    rank[np.argsort(importance, kind="stable")] = np.arange(size) / max(size, 1)
    out = rank.copy()
    out[list(chosen)] += 1.0
    return out


def _forward_order(groups, by_group, model, x) -> list[GroupView]:
    """Groups sorted by when their first consumer runs (groups without consumers last)."""
    names = sorted({t.module for taps in by_group.values() for t in taps})
    position = {name: i for i, name in enumerate(call_order(model, x, names))}

    def first_call(group: GroupView) -> int:
        return min((position[t.module] for t in by_group.get(group.group_id, [])), default=len(names))

    return sorted(groups, key=first_call)
