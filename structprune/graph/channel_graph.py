"""ChannelGroup and ChannelGraph: the analysis result every later stage reads.

A *component* is a set of channel elements that must go together (one filter with the BN entries and
next-layer input columns it feeds, or one whole attention head). Components touching the same set of
parameter axes form a *group*; channel i of a group is its i-th component in the order of the group's
first member axis. Pruning removes components.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from structprune.ir.reasons import Reason
from structprune.report.tables import format_table


@dataclass(frozen=True, eq=False)
class Member:
    """One axis of one parameter/buffer in a group. `positions[p]` is the group channel that
    position p of the axis belongs to, or -1 where the position belongs to another group."""

    fqn: str
    axis: int
    role: str
    positions: np.ndarray

    @property
    def ref(self) -> str:
        return f"{self.fqn}:{self.axis}"


@dataclass(frozen=True, eq=False)
class ChannelGroup:
    """Every axis that must lose the same channels together."""

    id: str
    size: int
    members: tuple[Member, ...]
    prunable: bool
    reasons: tuple[Reason, ...]
    exact: bool
    inexact_ops: tuple[str, ...]
    components: np.ndarray = field(repr=False)
    assumptions: tuple[str, ...] = ()  # what pruning it relies on that only verification confirms

    def member_fqns(self) -> list[str]:
        return sorted({m.fqn for m in self.members})

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "size": self.size,
            "prunable": self.prunable,
            "exact": self.exact,
            "members": [m.ref for m in self.members],
            "reasons": [r.to_json() for r in self.reasons],
            "inexact_ops": list(self.inexact_ops),
        }


@dataclass(frozen=True, eq=False)
class ChannelGraph:
    """Groups of coupled channels of one captured model, plus what the rewrite needs to apply a plan."""

    groups: tuple[ChannelGroup, ...]
    captured: object = field(repr=False)
    component: np.ndarray = field(repr=False)
    state_maps: dict = field(repr=False)
    values: dict = field(repr=False)
    attention: str = "heads"  # the attention mode the rules ran in: "heads" or "head_dims"

    @property
    def prunable(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if g.prunable)

    @property
    def blocked(self) -> tuple[ChannelGroup, ...]:
        return tuple(g for g in self.groups if not g.prunable)

    def group(self, group_id: str) -> ChannelGroup:
        for g in self.groups:
            if g.id == group_id:
                return g
        raise KeyError(group_id)

    def summary(self) -> str:
        """A readable table: one row per group."""
        rows = [
            [g.id, g.size, "yes" if g.prunable else "no", "exact" if g.exact else "inexact",
             len(g.members), _why(g)]
            for g in self.groups
        ]
        head = f"{len(self.prunable)} prunable groups, {len(self.blocked)} blocked\n"
        return head + format_table(["group", "size", "prunable", "masking", "members", "why"], rows)


def _why(g: ChannelGroup) -> str:
    if g.reasons:
        return "; ".join(sorted({str(r) for r in g.reasons}))[:120]
    if g.inexact_ops:
        return "mixed by " + ", ".join(g.inexact_ops)
    return ""
