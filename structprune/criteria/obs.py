"""Structured Optimal Brain Surgeon: remove a group's channels by the inverse-Hessian rule of ZipLM
(Kurtic, Frantar, Alistarh, "ZipLM: Inference-Aware Structured Pruning of Language Models", NeurIPS
2023) and SlimGPT (Ling et al., "SlimGPT: Layer-wise Structured Pruning for Large Language Models",
NeurIPS 2024), with the intercept of FLAP (An et al., "Fluctuation-based Adaptive Structured Pruning
for Large Language Models", AAAI 2024) as bias compensation.

Notation: a consumer computes Y = X W^T + b on rows X (positions: tokens, patches) whose columns
include the group's channels; H = [X 1]^T [X 1] (see `hessian.py`), dampened by `damp` times the mean
of its diagonal (1e-2, as ZipLM's FastOBC). Removing the columns S of a channel with the optimal update
of all remaining weights costs  rho_S = sum over outputs of  W_:S [H^-1]_SS^-1 W_:S^T  (one column: the
classic ||W_:j||^2 / [H^-1]_jj), and the update is  W <- W - W_:S [H^-1]_SS^-1 [H^-1]_S:  ;  H^-1 is
downdated the same way. The intercept column is never removed, so the bias absorbs the mean of what
was removed (FLAP's bias compensation, here exact under least squares). A channel read by several
consumers costs the sum of their rho.

Greedy removal one channel at a time (ZipLM) is run in `rounds` batches (SlimGPT's batched greedy
pruning): each round removes the ceil(to_remove / rounds) cheapest channels at once with the exact
block update, so a layer costs `rounds` matrix products instead of a Python step per channel.

Our adaptation: the criterion only chooses channels (H is measured on the dense network in one
forward pass over the first `hessian_samples` calibration samples, padded tokens left out, rows weighted
by 1 / var of the stream where a LayerNorm reads the consumer's output plus a residual, as the refit
weights them: see `hessian.py`); the weight update is done after the rewrite by
`structprune.calibrate.reconstruct`, layer by layer on the already-pruned network, which the plan asks
for (`plan.meta["reconstruction"]`: target "stream", ridge = `damp`, `max_samples`, `weigh`, and
`tune_epochs` / `tune_lr` of tuning by gradient after the refits, off by default: see
`calibrate.unit_tuning` (a feed-forward network tuned on token rows, its consumer refit exactly after)
and `calibrate.block_tuning` (the whole block, where no such unit is found)). H needs fewer rows than
the refit: on all-MiniLM-L6-v2 at FFN -50 % measuring it on 1024 of the 2048 sentences left the mean
cosine where it was (0.9708 / 0.9709, two epochs of tuning) and saved about 10 s of 70.
`weigh`: "tokens" (every real token counts once, as a language model's loss counts them) or "samples"
(each sample's real tokens share one weight, as a mean-pooled sentence embedding counts them), in H,
the refit and the tuning alike.
Groups without a consumer of the form X W^T + b fall back to the L1 magnitude ranking. H for score()
and select() of the same ScoringContext is measured once (a cache keyed weakly by the context).
"""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch

from structprune.criteria.activations import load_batches, with_fallback
from structprune.criteria.base import GroupView, ScoringContext, Selection
from structprune.criteria.hessian import ConsumerGram, consumer_grams
from structprune.criteria.readers import Reader, find_readers
from structprune.criteria.taps import checked_weighing, consumer_taps, taps_by_group
from structprune.data.batches import Batch, take_first
from structprune.data.recording import recording_of
from structprune.data.running import eval_mode

PROBE_SAMPLES = 2  # samples of the first batch a stream reader is probed on
RECONSTRUCTION_KEY = "reconstruction"  # plan meta: how calibrate.reconstruct refits after this criterion


@dataclass(eq=False)
class Surgeon:
    """Greedy structured OBS on one consumer: W (out, columns) and H^-1, channel -> its columns."""

    weight: torch.Tensor
    hinv: torch.Tensor
    blocks: torch.Tensor  # (channels, columns per channel) column indices; row c is channel c's
    present: torch.Tensor  # (channels,) bool: the channel has columns in this consumer

    @classmethod
    def of(cls, state: ConsumerGram, size: int, damp: float) -> Surgeon | None:
        per = [np.flatnonzero(state.columns == c) for c in range(size)]
        widths = {len(p) for p in per if len(p)}
        if len(widths) != 1:
            return None  # channels with different column counts: not handled
        width = widths.pop()
        blocks = torch.as_tensor(np.stack([p if len(p) else np.zeros(width, dtype=np.int64) for p in per]))
        if damp not in state.inverses:
            state.inverses[damp] = _damped_inverse(state, damp)
        return cls(state.weight.clone(), state.inverses[damp].clone(), blocks.to(state.weight.device),
                   torch.as_tensor([len(p) > 0 for p in per], device=state.weight.device))

    def costs(self, alive: torch.Tensor) -> torch.Tensor:
        """rho per channel (0 where the channel has no columns here, inf once removed)."""
        out = torch.zeros(len(alive), dtype=torch.float64, device=self.weight.device)
        live = torch.nonzero(alive & self.present).flatten()
        cols = self.blocks[live]
        w = self.weight[:, cols]  # (out, n, b)
        block = self.hinv[cols.unsqueeze(-1), cols.unsqueeze(-2)]  # (n, b, b)
        if cols.shape[1] == 1:
            out[live] = (w[..., 0] ** 2).sum(dim=0) / block[:, 0, 0].clamp(min=1e-300)
        else:
            solved = torch.linalg.solve(block, w.permute(1, 2, 0))  # (n, b, out)
            out[live] = (solved * w.permute(1, 2, 0)).sum(dim=(1, 2))
        return out

    def remove(self, channels: torch.Tensor) -> None:
        """Remove these channels' columns with the optimal update of the remaining weights."""
        cols = self.blocks[channels[self.present[channels]]].reshape(-1)
        if not len(cols):
            return
        step = torch.linalg.solve(self.hinv[cols][:, cols], self.hinv[cols])  # [H^-1]_SS^-1 [H^-1]_S:
        self.weight -= self.weight[:, cols] @ step
        self.hinv -= self.hinv[:, cols] @ step
        self.weight[:, cols] = 0.0
        self.hinv[cols, :] = 0.0
        self.hinv[:, cols] = 0.0


def removal_order(surgeons: list[Surgeon], size: int, to_remove: int, rounds: int) -> list[int]:
    """Channels in the order batched greedy OBS removes them (`to_remove` of them)."""
    alive = torch.ones(size, dtype=torch.bool, device=surgeons[0].weight.device)
    per_round = max(1, math.ceil(to_remove / max(rounds, 1)))
    order: list[int] = []
    while len(order) < to_remove:
        cost = sum(s.costs(alive) for s in surgeons)
        cost[~alive] = math.inf
        take = min(per_round, to_remove - len(order))
        chosen = torch.topk(cost, take, largest=False, sorted=True).indices
        for surgeon in surgeons:
            surgeon.remove(chosen)
        alive[chosen] = False
        order += chosen.tolist()
    return order


def stream_readers(model: torch.nn.Module, taps, batch: Batch) -> dict[str, Reader]:
    """The stream reader of each tap's consumer (see `readers.py`), probed on two samples of `batch`."""
    with eval_mode(model):
        return find_readers(model, (t.module for t in taps), take_first(batch.x, PROBE_SAMPLES))


def _damped_inverse(state: ConsumerGram, damp: float) -> torch.Tensor:
    """(H + damp * mean diag(H) on the data columns)^-1; the intercept column is not dampened."""
    gram = state.gram.clone()
    data = len(state.columns) - int(state.has_bias)
    diag = torch.diagonal(gram)
    level = float(diag[:data].mean()) if data else 0.0
    diag[:data] += damp * level if level > 0 else 1.0
    try:
        return torch.cholesky_inverse(torch.linalg.cholesky(gram))
    except RuntimeError:  # not positive definite even when dampened: pseudo-inverse
        return torch.linalg.pinv(gram, hermitian=True)


@dataclass(frozen=True)
class StructuredOBS:
    """Structured OBS channel selection (ZipLM / SlimGPT rule, FLAP intercept); see the module
    docstring. `select` keeps the planner's counts (batched greedy removal with updates); `score` is
    each channel's cost rho of removal alone.

    >>> import torch, structprune
    >>> from structprune.criteria.views import group_views
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    >>> graph = structprune.analyze(net, torch.randn(2, 4))
    >>> ctx = ScoringContext(net, torch.randn(2, 4), [torch.randn(64, 4)])
    >>> len(StructuredOBS().select(group_views(graph, net), ctx, {"0.weight:0": 5}).keep["0.weight:0"])
    5
    """

    name: str = "obs"
    max_samples: int | None = 2048
    hessian_samples: int | None = 1024
    damp: float = 0.01
    rounds: int = 16
    tune_epochs: float = 0.0
    tune_lr: float = 1e-3
    weigh: str = "tokens"
    max_features: int = 8192
    needs_data: bool = True
    needs_labels: bool = False
    comparable_scores: bool = True  # rho is output error in the same units in every group: global compares it as is
    description: str = "structured OBS: inverse-Hessian channel removal with bias compensation (ZipLM, SlimGPT)"
    _grams: weakref.WeakKeyDictionary = field(default_factory=weakref.WeakKeyDictionary, init=False,
                                              repr=False, compare=False)

    def __post_init__(self) -> None:
        checked_weighing(self.weigh, "obs")

    def score(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, np.ndarray]:
        """The OBS cost rho of removing each channel alone (the saliency before any update); `select`
        runs the greedy removal with updates."""
        grams, measured = self._grams_of(groups, ctx), {}
        for group in groups:
            surgeons = self._surgeons(group, grams)
            if surgeons:
                alive = torch.ones(group.size, dtype=torch.bool, device=surgeons[0].weight.device)
                measured[group.group_id] = sum(s.costs(alive) for s in surgeons).cpu().numpy()
        return with_fallback(groups, measured)

    def select(self, groups: list[GroupView], ctx: ScoringContext, keep_counts: Mapping[str, int]) -> Selection:
        """The planner's count per group, chosen by batched greedy OBS (L1 magnitude where no consumer fits)."""
        grams, keep = self._grams_of(groups, ctx), {}
        for group in groups:
            count = min(max(int(keep_counts.get(group.group_id, group.size)), 1), group.size)
            surgeons = self._surgeons(group, grams)
            if surgeons:
                gone = set(removal_order(surgeons, group.size, group.size - count, self.rounds))
                keep[group.group_id] = tuple(c for c in range(group.size) if c not in gone)
            else:
                scores = with_fallback([group], {})[group.group_id]
                keep[group.group_id] = tuple(sorted(np.argsort(-scores, kind="stable")[:count].tolist()))
        return Selection(keep, {RECONSTRUCTION_KEY: {"target": "stream", "ridge": self.damp,
                                                     "max_samples": self.max_samples,
                                                     "tune_epochs": self.tune_epochs, "tune_lr": self.tune_lr,
                                                     "weigh": self.weigh}})

    def _hessian_budget(self) -> int | None:
        """Samples H is measured on: `hessian_samples` where it is fewer than `max_samples` (None: all)."""
        if self.hessian_samples is None:
            return self.max_samples
        if self.max_samples is None:
            return self.hessian_samples
        return min(self.hessian_samples, self.max_samples)

    def _surgeons(self, group: GroupView, grams: Mapping[str, list[ConsumerGram]]) -> list[Surgeon]:
        made = (Surgeon.of(g, group.size, self.damp) for g in grams.get(group.group_id, []))
        return [s for s in made if s is not None]

    def _grams_of(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, list[ConsumerGram]]:
        """H of the groups' consumers: one forward pass over the calibration data for those not yet
        measured in this context."""
        cached = self._grams.setdefault(ctx, {})
        todo = [g for g in groups if g.group_id not in cached]
        if todo:
            taps = consumer_taps(todo, ctx.model)
            batches = load_batches(ctx, self._hessian_budget(), self.name)
            readers = stream_readers(ctx.model, taps, batches[0]) if taps else {}
            grams = consumer_grams(ctx.model, taps, batches, self.max_features, readers, self.weigh,
                                   recording_of(ctx.data)) if taps else {}
            by_group = taps_by_group(taps)
            cached.update({g.group_id: [grams[id(t)] for t in by_group.get(g.group_id, []) if id(t) in grams]
                           for g in todo})
        return cached
