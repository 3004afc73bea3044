"""Data-free baselines: L1/L2 magnitude over all of a group's members, BN scale, random."""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
import torch

from structprune.criteria.base import GroupView, PerGroupCriterion, ScoringContext, TensorAxis


@dataclass(frozen=True)
class Magnitude:
    """Sum over every parameter member of the group of the per-channel L_p norm (to the power p):
    the whole coupled structure counts, not just the first layer (Torch-Pruning's group norm).
    Each tensor axis is reduced once per `score` call and its row sums are shared by every group
    holding it, so a tensor shared by many groups (a concat consumer) costs its size once overall."""

    name: str
    p: int
    description: str = ""
    needs_data: bool = False

    def score(self, groups: list[GroupView], ctx: ScoringContext | None) -> dict[str, np.ndarray]:
        sums = _RowSums()
        return {g.group_id: _magnitude(g, self.p, sums) for g in groups}

    def fn(self, group: GroupView, ctx: ScoringContext | None) -> np.ndarray:
        """One group's scores (the per-group form of `score`)."""
        return _magnitude(group, self.p, _RowSums())


class _RowSums:
    """One scoring call's row sums per tensor axis (`by_axis`), plus one scratch buffer per
    dtype that every |x|^p temporary of the call is written into. A fresh temporary per weight would
    leave the allocator holding the freed ones apart: about 200 MB of heap through scoring a ViT-Base,
    in some runs. Values are the same as with fresh temporaries."""

    def __init__(self) -> None:
        self.by_axis: dict[TensorAxis, np.ndarray] = {}
        self.scratch: dict[tuple, torch.Tensor] = {}

    def buffer_like(self, t: torch.Tensor) -> torch.Tensor:
        """An uninitialised tensor laid out as `t` (what an elementwise op on `t` returns)."""
        if not t.is_contiguous():
            return torch.empty_like(t)
        key = (t.dtype, t.device)
        if key not in self.scratch or self.scratch[key].numel() < t.numel():
            self.scratch[key] = torch.empty(t.numel(), dtype=t.dtype, device=t.device)
        return self.scratch[key][: t.numel()].view(t.shape)


def _magnitude(group: GroupView, p: int, sums: _RowSums) -> np.ndarray:
    """Per channel of the group, the sum over its parameter members' rows of sum |x|^p; `sums`
    caches each tensor axis's row sums for the other groups of the same call."""
    total = np.zeros(group.size)
    for member in group.members:
        if member.is_param:
            if member.source not in sums.by_axis:
                sums.by_axis[member.source] = _row_power_sums(member.source, p, sums).detach().double().cpu().numpy()
            rows = np.flatnonzero(member.positions >= 0)
            np.add.at(total, member.positions[rows], sums.by_axis[member.source][rows])
    return total


def _row_power_sums(source: TensorAxis, p: int, sums: _RowSums) -> torch.Tensor:
    """Sum of |x|^p over each row of the tensor axis. Rows along the leading axis of a contiguous
    tensor are contiguous already and go through the norm kernel (row by row, as before); an inner
    axis is reduced in the tensor's own memory order instead of being transposed into rows first."""
    if source.axis == 0 and source.full.is_contiguous():
        return torch.linalg.vector_norm(source.matrix, ord=p, dim=1).pow(p)
    powers = _abs_power(source.full, p, sums.buffer_like(source.full))
    return powers.sum(dim=[d for d in range(source.full.ndim) if d != source.axis])


_ABS_POWER = MappingProxyType({1: torch.abs, 2: torch.square})


def _abs_power(t: torch.Tensor, p: int, out: torch.Tensor) -> torch.Tensor:
    """|t|^p written into `out`, in one pass for the usual p."""
    return _ABS_POWER[p](t, out=out) if p in _ABS_POWER else torch.abs(t, out=out).pow_(p)


@dataclass(frozen=True)
class BNScale:
    """|gamma| of the group's normalisation scales (1-D element-wise weights, Liu et al. 2017
    "network slimming"); groups without one fall back to L1 magnitude (row sums shared as in L1)."""

    name: str = "bn_scale"
    description: str = "|BatchNorm gamma| (network slimming)"
    needs_data: bool = False

    def score(self, groups: list[GroupView], ctx: ScoringContext | None) -> dict[str, np.ndarray]:
        sums = _RowSums()
        return {g.group_id: _bn_scale(g, sums) for g in groups}


def _bn_scale(group: GroupView, sums: _RowSums) -> np.ndarray:
    scales = [m for m in group.members if m.role == "elem" and m.is_param and m.fqn.endswith("weight")
              and m.tensor.shape[1] == 1]
    if not scales:
        return _magnitude(group, 1, sums)
    return sum(m.per_channel(m.tensor.abs().sum(dim=1), group.size) for m in scales)


def _random(group: GroupView, ctx: ScoringContext) -> np.ndarray:
    """Uniform random scores, reproducible from (seed, group id)."""
    rng = np.random.default_rng([ctx.seed, zlib.crc32(group.group_id.encode())])
    return rng.random(group.size)


L1 = Magnitude("l1", 1, description="sum of |w| over the group")
L2 = Magnitude("l2", 2, description="sum of w² over the group")
BN_SCALE = BNScale()
RANDOM = PerGroupCriterion("random", _random, description="seeded random baseline")
