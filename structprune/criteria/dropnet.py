"""DropNet (Tan & Motani, "DropNet: Reducing Neural Network Complexity via Iterative Pruning",
ICML 2020; arXiv 2207.06646).

Paper: a node's (filter's) score is its average post-activation value over the training samples
(sec. 3, "DropNet"; for a filter, the mean over its feature map first); the lowest-scoring nodes are
dropped. Two scopes: `minimum_layer` compares nodes within each layer, `minimum` compares all nodes
of the network at once. Iterative pruning (Algorithm 1): each cycle drops a fraction p (p = 0.2 in
the paper) of the remaining nodes, then resets the remaining weights to their initial values and
retrains before the next cycle.

Our adaptation: the score is the mean *absolute* value (equal to the paper's mean for ReLU nets,
well-defined for others) of the signal at the group's consumer inputs on the calibration data, so
every coupled member of a group is scored once, averaged over the group's consumers; padded tokens
(a dict batch's `attention_mask`) are left out of each sample's mean. One-shot mode
scores once. Iterative mode drops p of the remaining channels per cycle with the dropped channels
zeroed at their consumers for the following measurements; a `recover(model, dropped)` callback (for
instance fine-tuning with `masked_channels`) may run between cycles -- no weight reset or retraining
happens unless the caller provides one. Scope 'global' (`minimum`) compares raw means across
groups; selection-plan normalisation would hide that, so use `select` for the exact scope.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from structprune.criteria.activations import load_batches, with_fallback
from structprune.criteria.base import GroupView, ScoringContext, Selection
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
from structprune.data.running import eval_mode


@dataclass(frozen=True)
class DropNet:
    """DropNet scores (mean |post-activation| per channel); scope 'layer' (= `minimum_layer`) or
    'global' (= `minimum`); `iterative` drops `fraction` of the remaining channels per cycle.

    >>> import torch, structprune
    >>> from structprune.criteria.views import group_views
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    >>> graph = structprune.analyze(net, torch.randn(2, 4))
    >>> ctx = ScoringContext(net, torch.randn(2, 4), [(torch.randn(16, 4), None)])
    >>> DropNet().score(group_views(graph, net), ctx)["0.weight:0"].shape
    (6,)
    """

    name: str = "dropnet"
    scope: str = "layer"
    iterative: bool = False
    fraction: float = 0.2
    max_samples: int | None = 512
    max_cycles: int = 40
    recover: Callable[[nn.Module, Mapping[str, np.ndarray]], None] | None = None
    needs_data: bool = True
    needs_labels: bool = False
    description: str = "DropNet: mean |post-activation| at consumer inputs (Tan & Motani)"

    def __post_init__(self) -> None:
        if self.scope not in ("layer", "global"):
            raise ValueError(f"DropNet scope must be 'layer' (minimum_layer) or 'global' (minimum), got {self.scope!r}")
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"DropNet fraction must be in (0, 1), got {self.fraction!r}")

    def score(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, np.ndarray]:
        """One-shot: the mean activations. Iterative: the cycle each channel would be dropped in
        (later = higher), ties broken by the last measured activation; never-dropped channels last."""
        if not self.iterative:
            return with_fallback(groups, self._measure(groups, ctx, {}))
        return self._cycles(groups, ctx, {g.group_id: 1 for g in groups})[0]

    def select(self, groups: list[GroupView], ctx: ScoringContext, keep_counts: Mapping[str, int]) -> Selection:
        """Kept channels for the planner's counts (scope 'global' keeps only their total)."""
        counts = {g.group_id: int(keep_counts.get(g.group_id, g.size)) for g in groups}
        if self.iterative:
            alive = self._cycles(groups, ctx, counts)[1]
            return Selection({gid: tuple(np.flatnonzero(a).tolist()) for gid, a in alive.items()}, {})
        scores = with_fallback(groups, self._measure(groups, ctx, {}))
        alive = _drop_once(groups, scores, counts, self.scope, fraction=1.0)
        return Selection({gid: tuple(np.flatnonzero(a).tolist()) for gid, a in alive.items()}, {})

    def _measure(self, groups, ctx, dropped) -> dict[str, np.ndarray]:
        taps = consumer_taps(groups, ctx.model)
        batches = load_batches(ctx, self.max_samples, self.name)
        with masked_channels(ctx.model, taps, dropped):
            return token_mean_abs(ctx.model, taps, batches)

    def _cycles(self, groups, ctx, counts):
        """Drop `fraction` of what remains per cycle until every group is down to its count."""
        alive = {g.group_id: np.ones(g.size, dtype=bool) for g in groups}
        dropped_at = {g.group_id: np.full(g.size, np.inf) for g in groups}
        seen = {g.group_id: np.zeros(g.size) for g in groups}  # activation when last measured alive
        for cycle in range(self.max_cycles):
            if all(alive[g.group_id].sum() <= counts[g.group_id] for g in groups):
                break
            last = with_fallback(groups, self._measure(groups, ctx, {k: ~v for k, v in alive.items()}))
            new_alive = _drop_once(groups, last, counts, self.scope, self.fraction, alive)
            if all(np.array_equal(new_alive[gid], alive[gid]) for gid in alive):
                break  # global scope: the total is reached although some groups are above their count
            for gid, now in new_alive.items():
                seen[gid][alive[gid]] = last[gid][alive[gid]]
                dropped_at[gid][alive[gid] & ~now] = cycle
            alive = new_alive
            if self.recover is not None:
                self.recover(ctx.model, {k: ~v for k, v in alive.items()})
        return _order_scores(dropped_at, seen), alive


def token_mean_abs(model: nn.Module, taps: list[Tap], batches) -> dict[str, np.ndarray]:
    """Per group: mean over samples of each channel's mean |activation| over its places, averaged over
    the group's consumers; padded tokens are not places (a sample of padding only is not counted)."""
    sums = {id(t): torch.zeros(len(t.positions), dtype=torch.float64) for t in taps}
    counts = {id(t): 0 for t in taps}
    padding = Padding()

    def see(tap: Tap, x: torch.Tensor) -> None:
        per_sample = _place_mean(as_samples(x.detach(), tap.channel_dim).abs(), padding.places(tap, x))
        sums[id(tap)] += per_sample.double().sum(dim=0).cpu()
        counts[id(tap)] += per_sample.shape[0]

    with eval_mode(model), observe_inputs(model, taps, see), torch.no_grad():
        for batch in batches:
            padding.run(model, batch.x)
    out = {}
    for gid, group_taps in taps_by_group(taps).items():
        seen = [t for t in group_taps if counts[id(t)] > 0]
        if seen:
            out[gid] = np.mean([to_channels((sums[id(t)] / counts[id(t)]).numpy(), t.positions, t.size)
                                for t in seen], axis=0)
    return out


def _place_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """(samples, positions): the mean over places of (samples, places, positions), real tokens only."""
    if valid is None:
        return values.mean(dim=1)
    weight = valid.to(values.dtype).unsqueeze(-1)
    count = weight.sum(dim=1)
    return ((values * weight).sum(dim=1) / count.clamp(min=1))[count[:, 0] > 0]


def _drop_once(groups, scores, counts, scope, fraction, alive=None) -> dict[str, np.ndarray]:
    """Drop the lowest `fraction` of the live channels (per group, or over all groups) without
    going below a group's count; fraction=1.0 goes straight to the counts."""
    alive = alive or {g.group_id: np.ones(g.size, dtype=bool) for g in groups}
    if scope == "layer":
        return {g.group_id: _drop_in_group(scores[g.group_id], alive[g.group_id], counts[g.group_id], fraction)
                for g in groups}
    return _drop_global(groups, scores, counts, fraction, alive)


def _drop_in_group(score: np.ndarray, alive: np.ndarray, count: int, fraction: float) -> np.ndarray:
    live = np.flatnonzero(alive)
    n_drop = min(math.ceil(fraction * len(live)), max(len(live) - max(count, 1), 0))
    out = alive.copy()
    out[live[np.argsort(score[live], kind="stable")[:n_drop]]] = False
    return out


def _drop_global(groups, scores, counts, fraction, alive) -> dict[str, np.ndarray]:
    """DropNet 'minimum': the globally lowest raw scores go until the planner's total is met; a
    group never loses its last channel."""
    live_total = sum(int(a.sum()) for a in alive.values())
    target_total = sum(max(counts[g.group_id], 1) for g in groups)
    n_drop = min(math.ceil(fraction * live_total), max(live_total - target_total, 0))
    entries = sorted((scores[g.group_id][i], g.group_id, i) for g in groups for i in np.flatnonzero(alive[g.group_id]))
    out = {k: v.copy() for k, v in alive.items()}
    for _, gid, i in entries:
        if n_drop == 0:
            break
        if out[gid].sum() > 1:
            out[gid][i] = False
            n_drop -= 1
    return out


def _order_scores(dropped_at, last) -> dict[str, np.ndarray]:
    """Score = cycle dropped in (survivors: after the last cycle) + a tie-break in [0, 0.5)."""
    finite = [w[np.isfinite(w)] for w in dropped_at.values()]
    survivors_at = max((float(f.max()) for f in finite if f.size), default=-1.0) + 1.0
    out = {}
    for gid, when in dropped_at.items():
        tie = last.get(gid, np.zeros(len(when)))
        tie = (tie - tie.min()) / (np.ptp(tie) + 1e-12) if len(tie) else tie
        out[gid] = np.where(np.isinf(when), survivors_at, when) + 0.49 * tie
    return out
