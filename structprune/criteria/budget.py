"""Coreset budget allocation across layers (Liebenwein et al., ICLR 2020, sec. 4 and the authors'
torchprune allocator): one global epsilon, found by bisection so that the pruned network's
parameter count meets a budget; each layer's sample count follows the paper's bound

    m_l(eps) = ceil( K (6 + 2 eps) S_l log(8 eta_l / delta) / eps^2 ),

S_l = sum of the layer's sensitivities, eta_l = its output units; a layer keeps the expected number
of distinct channels among m_l draws from p = s / S_l, at least one and at most all."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
from torch import nn

from structprune.criteria.base import GroupView, canonical_names


@dataclass(frozen=True)
class Allocation:
    """Kept channels per group, the epsilon that gave them, and the resulting parameter count."""

    counts: Mapping[str, int]
    epsilon: float
    params: float


def expected_unique(p: np.ndarray, m: float) -> float:
    """E[number of distinct items] in m draws with replacement from p."""
    return float(np.sum(1.0 - np.power(1.0 - p, m)))


def sample_bound(eps: float, total_sens: float, eta: int, k_const: float, delta: float) -> float:
    """The paper's sample complexity m(eps) for one layer (see module docstring)."""
    return math.ceil(k_const * (6 + 2 * eps) * total_sens * math.log(8 * eta / delta) / eps**2)


class ParamModel:
    """Parameter count as a function of kept channels per group: each tensor shrinks by the kept
    fraction of every group on its axes (tensors outside any group stay whole)."""

    def __init__(self, groups: list[GroupView], model: nn.Module) -> None:
        self.sizes = {g.group_id: g.size for g in groups}
        names = canonical_names(model)  # a tied tensor may be a member under any of its names
        touched: dict[str, dict[str, float]] = {}
        for g in groups:
            for m in g.members:
                share = float(np.mean(m.positions >= 0)) if len(m.positions) else 0.0
                touched.setdefault(names.get(m.fqn, m.fqn), {})[g.group_id] = share
        self.tensors = [(p.numel(), touched.get(name, {})) for name, p in model.named_parameters()]

    def count(self, keep: Mapping[str, int]) -> float:
        total = 0.0
        for numel, shares in self.tensors:
            factor = 1.0
            for gid, share in shares.items():
                factor *= 1.0 - share * (1.0 - keep.get(gid, self.sizes[gid]) / self.sizes[gid])
            total += numel * factor
        return total


def allocate(sens: Mapping[str, np.ndarray], eta: Mapping[str, int], sizes: Mapping[str, int],
             params: ParamModel, budget: float, *, fixed: Mapping[str, int] | None = None,
             k_const: float = 3.0, delta: float = 1e-16) -> Allocation:
    """Bisection on log(eps): the smallest eps whose allocation fits the parameter budget. Groups
    without sensitivities keep `fixed` counts (default: all channels)."""
    def counts(eps: float) -> dict[str, int]:
        out = {**sizes, **(fixed or {})}
        for gid, s in sens.items():
            total = float(s.sum())
            if total > 0:
                m = sample_bound(eps, total, eta[gid], k_const, delta)
                out[gid] = int(min(sizes[gid], max(1, round(expected_unique(s / total, m)))))
        return out

    lo, hi = math.log(1e-6), math.log(1e8)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if params.count(counts(math.exp(mid))) <= budget else (mid, hi)
    eps = math.exp(hi)
    chosen = counts(eps)
    return Allocation(chosen, eps, params.count(chosen))
