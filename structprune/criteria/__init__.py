"""Criteria registry: name -> criterion. Extend by passing a Criterion object instead of a name."""
from __future__ import annotations

from types import MappingProxyType

from structprune.criteria.base import Criterion, GroupView, MemberSlice, PerGroupCriterion, ScoringContext
from structprune.criteria.magnitude import BN_SCALE, L1, L2, RANDOM

CRITERIA = MappingProxyType({c.name: c for c in (L1, L2, BN_SCALE, RANDOM)})


def get_criterion(criterion) -> Criterion:
    """A registered name or a Criterion object -> Criterion; unknown names raise ValueError."""
    if not isinstance(criterion, str):
        return criterion
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion '{criterion}'; choose one of: {', '.join(sorted(CRITERIA))}")
    return CRITERIA[criterion]


__all__ = ["CRITERIA", "Criterion", "GroupView", "MemberSlice", "PerGroupCriterion", "ScoringContext",
           "get_criterion"]
