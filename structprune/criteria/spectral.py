"""Curvature criteria: per-channel second-order importance and the spectral radius of a group's
Hessian block, from Hessian-vector products (Pearlmutter's trick) on labelled calibration data.

Importance (the second-order term of the Taylor expansion of the loss change when a channel's
parameters w_c are zeroed, as in Optimal Brain Damage, LeCun et al. 1990, and the second-order
variant of Molchanov et al. 2019): I_c = 1/2 w_c^T H_cc w_c, H_cc the diagonal block of the
Hessian for channel c (all of its coupled group's elements). Hutchinson-style estimate with shared
products: draw a sign eps_c per channel, form z = sum_c eps_c w_c over all channels of a colour
(groups touching disjoint tensors), compute H z once, and use eps_c <w_c, H z>, whose expectation
is w_c^T H_cc w_c; averaged over `probes`. Block traces tr(H_cc) come the same way from Rademacher
element vectors v: E[v_c^T (H v)_c] = tr(H_cc).

Spectral radius of a group's block H_GG: power iteration on masked HVPs, at most 100 iterations,
stopping when the Rayleigh quotient changes by less than 1e-3 (relative).
"""
from __future__ import annotations

import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from structprune.criteria.activations import load_batches
from structprune.criteria.base import GroupView, ScoringContext
from structprune.criteria.curvature import ChannelElements, channel_elements, colours, rademacher
from structprune.criteria.gradients import LossFn, cross_entropy, hessian_vector_product, requiring_grad
from structprune.data.running import eval_mode


@dataclass(frozen=True)
class Spectral:
    """1/2 w_c^T H_cc w_c per channel by Hutchinson probes on shared HVPs."""

    name: str = "spectral"
    probes: int = 16
    max_samples: int | None = 256
    loss_fn: LossFn = cross_entropy
    needs_data: bool = True
    needs_labels: bool = True
    description: str = "second-order importance 1/2 w^T H_cc w (Hutchinson, shared HVPs)"

    def score(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, np.ndarray]:
        return {gid: 0.5 * q for gid, q in self._estimate(groups, ctx, "quadratic").items()}

    def block_traces(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, np.ndarray]:
        """tr(H_cc) per channel (Hutchinson)."""
        return self._estimate(groups, ctx, "trace")

    def spectral_radius(self, group: GroupView, ctx: ScoringContext, max_iter: int = 100,
                        rtol: float = 1e-3) -> tuple[float, int]:
        """(|largest-magnitude eigenvalue| of the group's Hessian block, iterations used)."""
        el = channel_elements(group, ctx.model)
        params = dict(ctx.model.named_parameters())
        names = list(el.index)
        masks = {n: (el.index[n] >= 0).float() for n in names}
        gen = torch.Generator().manual_seed(_seed(ctx.seed, group.group_id))
        v = {n: torch.randn(params[n].shape, generator=gen).to(params[n]) * masks[n] for n in names}
        with _curvature_session(self, ctx, names) as hvp:
            return _power_iteration(hvp, v, masks, max_iter, rtol)

    def _estimate(self, groups, ctx, kind: str) -> dict[str, np.ndarray]:
        elements = [channel_elements(g, ctx.model) for g in groups]
        names = sorted({n for el in elements for n in el.index})
        params = dict(ctx.model.named_parameters())
        totals = {g.group_id: np.zeros(g.size) for g in groups}
        gen = torch.Generator().manual_seed(_seed(ctx.seed, kind))
        with _curvature_session(self, ctx, names) as hvp:
            for colour in colours(elements):
                for _ in range(self.probes):
                    signs = {el.group.group_id: _probe(el, params, kind, gen) for el in colour}
                    hz = hvp(_combine(colour, signs, params))
                    for el in colour:
                        totals[el.group.group_id] += _readout(el, signs[el.group.group_id], params, hz, kind)
        return {gid: t / self.probes for gid, t in totals.items()}


def _probe(el: ChannelElements, params, kind: str, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Per parameter: the probe's part on this group's elements (eps_c w_c, or element signs)."""
    if kind == "quadratic":
        eps = rademacher((el.group.size,), gen)
        return {"eps": eps, **{n: el.spread(eps, n).to(params[n]) * params[n].detach() for n in el.index}}
    return {n: rademacher(params[n].shape, gen).to(params[n]) * (el.index[n] >= 0) for n in el.index}


def _combine(colour, signs, params) -> dict[str, torch.Tensor]:
    z = {}
    for el in colour:
        for n in el.index:
            z[n] = z.get(n, torch.zeros_like(params[n])) + signs[el.group.group_id][n]
    return z


def _readout(el: ChannelElements, probe, params, hz, kind: str) -> np.ndarray:
    if kind == "quadratic":
        inner = el.per_channel({n: params[n].detach() * hz[n] for n in el.index})
        return probe["eps"].double().numpy() * inner
    return el.per_channel({n: probe[n] * hz[n] for n in el.index})


def _power_iteration(hvp, v, masks, max_iter, rtol) -> tuple[float, int]:
    v = _normalised(v)
    eigenvalue = 0.0
    for step in range(1, max_iter + 1):
        hv = {n: t * masks[n] for n, t in hvp(v).items()}
        new = float(sum((v[n] * hv[n]).sum() for n in v))
        if step > 1 and abs(new - eigenvalue) <= rtol * abs(new):
            return abs(new), step
        eigenvalue, v = new, _normalised(hv)
    return abs(eigenvalue), max_iter


def _normalised(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    norm = float(torch.sqrt(sum((t * t).sum() for t in v.values()))) + 1e-30
    return {n: t / norm for n, t in v.items()}


@contextmanager
def _curvature_session(crit: Spectral, ctx: ScoringContext, names: list[str]) -> Iterator[Callable]:
    """Calibration batches loaded, eval mode, grads enabled on `names`; yields hvp(v)."""
    params = dict(ctx.model.named_parameters())
    plist = [params[n] for n in names]
    batches = load_batches(ctx, crit.max_samples, crit.name, labels=True)

    def hvp(v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        vec = [v.get(n, torch.zeros_like(params[n])) for n in names]
        return dict(zip(names, hessian_vector_product(ctx.model, batches, plist, vec, crit.loss_fn)))

    with eval_mode(ctx.model), requiring_grad(plist):
        yield hvp


def _seed(seed: int, key: str) -> int:
    return (int(seed) * 1_000_003 + zlib.crc32(key.encode())) % (2**63)
