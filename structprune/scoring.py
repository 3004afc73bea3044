"""Bridge from the channel graph and the model's tensors to what criteria see (GroupView)."""
from __future__ import annotations

from typing import Iterable

from torch import nn

from structprune.criteria.base import GroupView, MemberSlice
from structprune.graph.channel_graph import ChannelGraph, ChannelGroup


def group_views(graph: ChannelGraph, model: nn.Module, groups: Iterable[ChannelGroup] | None = None) -> list[GroupView]:
    """One GroupView per group: each member's tensor with its axis first, flattened to 2-D."""
    params = dict(model.named_parameters(remove_duplicate=False))
    state = params | dict(model.named_buffers(remove_duplicate=False))
    views, matrices = [], {}

    def matrix(fqn: str, axis: int, rows: int):
        """The tensor with `axis` first, as (rows, -1): built once per tensor axis, shared by groups."""
        if (fqn, axis) not in matrices:
            matrices[(fqn, axis)] = state[fqn].detach().movedim(axis, 0).reshape(rows, -1)
        return matrices[(fqn, axis)]

    for group in graph.prunable if groups is None else groups:
        members = tuple(
            MemberSlice(m.fqn, m.role, matrix(m.fqn, m.axis, len(m.positions)), m.positions, m.fqn in params, m.axis)
            for m in group.members if m.fqn in state
        )
        views.append(GroupView(group.id, group.size, members))
    return views
