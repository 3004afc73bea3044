"""Coreset filter pruning (Liebenwein, Baykal, Lang, Feldman, Rus, "Provable Filter Pruning for
Efficient Neural Networks", ICLR 2020; arXiv 1911.07412).

Paper: each filter's empirical sensitivity s_j (its largest relative contribution to the next
layer's pre-activations over a small calibration batch; see `sensitivity.py`) defines the importance
sampling distribution p_j = s_j / S, S = sum_j s_j; draw m filters i.i.d. from p, keep the distinct
ones, and reweight each kept filter by (times drawn) / (m p_j) so the layer's output is an unbiased
estimate (Algorithm 1). m follows the sample-complexity bound of the paper's main theorem,
m = ceil(K (6 + 2 eps) S log(8 eta / delta) / eps^2), and one global eps is chosen by bisection so
the network meets a size budget (sec. 4, "layer-wise budget allocation").

Our adaptation: a filter is a channel group, measured at all of its consumers (max over them, since
s is a max; padded tokens of a dict batch's `attention_mask` are zeroed, so they share nothing);
'deterministic' (default) keeps the top-n channels by s, as the authors' deterministic PFP variant
does; 'sampled' implements the sampling and reweighting, the weights travel in the plan's meta
(`channel_scales`, applied by structprune.calibrate.apply_channel_scales). With `allocate=True`,
`select` takes the planner's keep counts only to fix the parameter budget and lets the bound spread
it across layers (K = 3, delta = 1e-16 as in torchprune); the parameter count is modelled from the
groups' members (`budget.ParamModel`).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from structprune.criteria.activations import load_batches, with_fallback
from structprune.criteria.base import SCALES_KEY, GroupView, ScoringContext, Selection
from structprune.criteria.budget import Allocation, ParamModel, allocate, expected_unique
from structprune.criteria.sensitivity import output_units, tap_sensitivity
from structprune.criteria.taps import Padding, Tap, consumer_taps, observe_inputs
from structprune.data.running import eval_mode


@dataclass(frozen=True)
class Coreset:
    """Empirical-sensitivity scores; `select` allocates the budget across layers and picks channels
    (top-n, or sampled and reweighted)."""

    name: str = "coreset"
    variant: str = "deterministic"
    allocate: bool = True
    max_samples: int | None = 128
    k_const: float = 3.0
    delta: float = 1e-16
    needs_data: bool = True
    needs_labels: bool = False
    description: str = "provable filter pruning: empirical sensitivity (Liebenwein et al. 2020)"

    def __post_init__(self) -> None:
        if self.variant not in ("deterministic", "sampled"):
            raise ValueError(f"coreset variant must be 'deterministic' or 'sampled', got {self.variant!r}")

    def score(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, np.ndarray]:
        return with_fallback(groups, self.sensitivities(groups, ctx)[0])

    def sensitivities(self, groups: list[GroupView], ctx: ScoringContext):
        """(sensitivity per channel, eta per group) for the groups with a usable consumer."""
        batches = load_batches(ctx, self.max_samples, self.name)
        taps = consumer_taps(groups, ctx.model)
        best: dict[int, np.ndarray] = {}
        eta: dict[str, int] = {}
        padding = Padding()

        def see(tap: Tap, x: torch.Tensor) -> None:
            s = tap_sensitivity(ctx.model, tap, padding.zeroed(tap, x.detach()))
            if s is not None:
                best[id(tap)] = s if id(tap) not in best else np.maximum(best[id(tap)], s)
                eta[tap.group_id] = max(eta.get(tap.group_id, 1), output_units(ctx.model, tap, x))

        with eval_mode(ctx.model), observe_inputs(ctx.model, taps, see), torch.no_grad():
            for batch in batches:
                padding.run(ctx.model, batch.x)
        return _per_group(taps, best), eta

    def select(self, groups: list[GroupView], ctx: ScoringContext, keep_counts: Mapping[str, int],
               sensitivities: tuple | None = None) -> Selection:
        """Kept channels (and, sampled, their scales); `sensitivities` may pass a previous
        `self.sensitivities(groups, ctx)` result to skip the calibration pass."""
        counts = {g.group_id: int(keep_counts.get(g.group_id, g.size)) for g in groups}
        sens, eta = sensitivities or self.sensitivities(groups, ctx)
        meta: dict = {}
        if self.allocate and sens:
            alloc = self.allocation(groups, ctx, sens, eta, counts)
            counts = dict(alloc.counts)
            meta["coreset_epsilon"] = alloc.epsilon
        scores = with_fallback(groups, sens)
        keep = {g.group_id: _top(scores[g.group_id], counts[g.group_id]) for g in groups}
        if self.variant == "sampled":
            keep, meta[SCALES_KEY] = _sampled(groups, sens, counts, keep, ctx.seed)
        return Selection(keep, meta)

    def allocation(self, groups, ctx, sens, eta, counts) -> Allocation:
        """Spread the parameter budget of `counts` over the groups by the sample-size bound."""
        params = ParamModel(groups, ctx.model)
        fixed = {gid: c for gid, c in counts.items() if gid not in sens}
        return allocate(sens, eta, {g.group_id: g.size for g in groups}, params, params.count(counts),
                        fixed=fixed, k_const=self.k_const, delta=self.delta)


def sample_channels(p: np.ndarray, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """m i.i.d. draws from p: (distinct channels, sorted; their reweighting count / (m p))."""
    draws = rng.choice(len(p), size=m, replace=True, p=p)
    kept, times = np.unique(draws, return_counts=True)
    return kept, times / (m * p[kept])


def draws_for(p: np.ndarray, n: int) -> int:
    """The number of draws whose expected number of distinct channels first reaches n."""
    lo, hi = 1, 1
    while expected_unique(p, hi) < n and hi < 10**9:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if expected_unique(p, mid) < n else (lo, mid)
    return lo


def _sampled(groups, sens, counts, keep, seed):
    scales = {}
    for g in groups:
        s = sens.get(g.group_id)
        if s is None or s.sum() <= 0 or counts[g.group_id] >= g.size:
            continue
        p = s / s.sum()
        rng = np.random.default_rng([seed, zlib.crc32(g.group_id.encode())])
        kept, weights = sample_channels(p, draws_for(p, counts[g.group_id]), rng)
        keep[g.group_id] = tuple(int(i) for i in kept)
        scales[g.group_id] = [float(w) for w in weights]
    return keep, scales


def _top(score: np.ndarray, n: int) -> tuple[int, ...]:
    return tuple(sorted(np.argsort(-score, kind="stable")[: max(1, n)].tolist()))


def _per_group(taps: list[Tap], best: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for tap in taps:
        if id(tap) in best:
            channels = _max_per_channel(best[id(tap)], tap)
            out[tap.group_id] = channels if tap.group_id not in out else np.maximum(out[tap.group_id], channels)
    return out


def _max_per_channel(per_position: np.ndarray, tap: Tap) -> np.ndarray:
    out = np.zeros(tap.size)
    mask = tap.positions >= 0
    np.maximum.at(out, tap.positions[mask], per_position[mask])
    return out
