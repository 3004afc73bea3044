"""Data-free baselines: L1/L2 magnitude over all of a group's members, BN scale, random."""
from __future__ import annotations

import zlib

import numpy as np
import torch

from structprune.criteria.base import GroupView, PerGroupCriterion, ScoringContext


def _magnitude(group: GroupView, p: int) -> np.ndarray:
    """Sum over every parameter member of the group of the per-channel L_p norm (to the power p):
    the whole coupled structure counts, not just the first layer (Torch-Pruning's group norm).
    Only the group's own rows are reduced, so a tensor shared by many groups (a concat consumer)
    costs its size once overall, not once per group."""
    total = np.zeros(group.size)
    for member in group.members:
        if member.is_param:
            rows = np.flatnonzero(member.positions >= 0)
            values = torch.linalg.vector_norm(member.tensor[torch.as_tensor(rows)], ord=p, dim=1).pow(p)
            np.add.at(total, member.positions[rows], values.detach().double().cpu().numpy())
    return total


def _bn_scale(group: GroupView, ctx: ScoringContext) -> np.ndarray:
    """|gamma| of the group's normalisation scales (1-D element-wise weights, Liu et al. 2017
    "network slimming"); groups without one fall back to L1 magnitude."""
    scales = [m for m in group.members if m.role == "elem" and m.is_param and m.fqn.endswith("weight")
              and m.tensor.shape[1] == 1]
    if not scales:
        return _magnitude(group, 1)
    return sum(m.per_channel(m.tensor.abs().sum(dim=1), group.size) for m in scales)


def _random(group: GroupView, ctx: ScoringContext) -> np.ndarray:
    """Uniform random scores, reproducible from (seed, group id)."""
    rng = np.random.default_rng([ctx.seed, zlib.crc32(group.group_id.encode())])
    return rng.random(group.size)


L1 = PerGroupCriterion("l1", lambda g, ctx: _magnitude(g, 1), description="sum of |w| over the group")
L2 = PerGroupCriterion("l2", lambda g, ctx: _magnitude(g, 2), description="sum of w² over the group")
BN_SCALE = PerGroupCriterion("bn_scale", _bn_scale, description="|BatchNorm gamma| (network slimming)")
RANDOM = PerGroupCriterion("random", _random, description="seeded random baseline")
