"""'group_norm': each channel scored by its coupled l2 norm, the quantity group-lasso training shrinks.

Notation: a channel c of a group owns one slice of every member of that group (a row of each producer's
weight and bias, the norm's scale and bias entries, a column block of each consumer's input weights);
its coupled norm is

    n_c = sqrt(eps + sum over the group's parameter members m of ||slice_m(c)||^2)

(buffers such as BatchNorm's running statistics are not parameters and do not count). Ranking by n_c
within a group is ranking by `l2` (which sums the same squares); what it adds is a scale that is
comparable across groups after group-lasso training (`structprune.recover.group_lasso`, whose penalty is
the sum of n_c) and the threshold selection of `structprune.selection.norm_threshold`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from structprune.criteria.base import GroupView, ScoringContext
from structprune.criteria.magnitude import L2

GROUP_NORM_EPS = 1e-8  # the smoothing of sqrt(eps + ||w||^2): the criterion's and the penalty's default


@dataclass(frozen=True)
class GroupNorm:
    """Score = coupled l2 norm of each channel over every parameter member of its group (see the module).

    >>> import torch
    >>> from torch import nn
    >>> import structprune
    >>> from structprune.criteria.views import group_views
    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> _ = [p.data.fill_(1.0) for p in net.parameters()]
    >>> views = group_views(structprune.analyze(net, torch.randn(1, 2)), net)
    >>> GroupNorm(eps=0.0).score(views, None)["0.weight:0"].round(4).tolist()  # sqrt(2 + 1 + 1) per channel
    [2.0, 2.0, 2.0]
    """

    name: str = "group_norm"
    eps: float = GROUP_NORM_EPS
    description: str = "coupled l2 norm of each channel over its whole group (group lasso's unit)"
    needs_data: bool = False

    def score(self, groups: list[GroupView], ctx: ScoringContext | None) -> dict[str, np.ndarray]:
        return {gid: np.sqrt(self.eps + squares) for gid, squares in L2.score(groups, ctx).items()}


GROUP_NORM = GroupNorm()
