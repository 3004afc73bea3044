"""Criteria registry: name -> criterion. Extend by passing a Criterion object instead of a name.

Data-free: l1, l2, bn_scale, random, group_norm (coupled l2 norm; group lasso's threshold). Data-driven
(need `data=`): taylor and spectral (labelled), dropnet, dropnet_global, dropnet_iterative, ispasp, coreset,
coreset_sampled, obs (inputs only; obs asks the reconstruction after the rewrite for its weight update).
Criteria with a `select` method (SelectingCriterion) choose channels themselves given keep counts.
`KFACTrainPrune` (train-and-prune from scratch, trains the model in place) is not registered by name:
construct it explicitly.
"""
from __future__ import annotations

from types import MappingProxyType

from structprune.criteria.base import (
    Criterion,
    GroupView,
    MemberSlice,
    PerGroupCriterion,
    ScoringContext,
    SelectingCriterion,
    Selection,
    TensorAxis,
)
from structprune.criteria.coreset import Coreset
from structprune.criteria.dropnet import DropNet
from structprune.criteria.group_norm import GROUP_NORM
from structprune.criteria.ispasp import ISpaSP
from structprune.criteria.kfac import KFACTrainPrune
from structprune.criteria.magnitude import BN_SCALE, L1, L2, RANDOM
from structprune.criteria.obs import StructuredOBS
from structprune.criteria.spectral import Spectral
from structprune.criteria.taylor import Taylor

_ALL = (L1, L2, BN_SCALE, RANDOM, Taylor(), DropNet(), DropNet(name="dropnet_global", scope="global"),
        DropNet(name="dropnet_iterative", iterative=True), ISpaSP(), Coreset(),
        Coreset(name="coreset_sampled", variant="sampled"), Spectral(), StructuredOBS(), GROUP_NORM)
CRITERIA = MappingProxyType({c.name: c for c in _ALL})


def get_criterion(criterion) -> Criterion:
    """A registered name or a Criterion object -> Criterion; unknown names raise ValueError."""
    if not isinstance(criterion, str):
        return criterion
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion '{criterion}'; choose one of: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[criterion]


def needs_labels(criterion) -> bool:
    """True if the criterion's calibration data must carry labels (it differentiates a loss)."""
    return bool(getattr(get_criterion(criterion), "needs_labels", False))


__all__ = ["CRITERIA", "Coreset", "Criterion", "DropNet", "GroupView", "ISpaSP", "KFACTrainPrune", "MemberSlice",
           "PerGroupCriterion", "ScoringContext", "SelectingCriterion", "Selection", "Spectral", "StructuredOBS",
           "Taylor", "TensorAxis", "get_criterion", "needs_labels"]
