"""Bridge from the channel graph and the model's tensors to what criteria see (GroupView)."""
from __future__ import annotations

from typing import Iterable

from torch import nn

from structprune.criteria.base import GroupView, MemberSlice, TensorAxis
from structprune.graph.channel_graph import ChannelGraph, ChannelGroup


def group_views(graph: ChannelGraph, model: nn.Module, groups: Iterable[ChannelGroup] | None = None) -> list[GroupView]:
    """One GroupView per group: each member's tensor axis (its 2-D matrix is built on first use)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    state = params | dict(model.named_buffers(remove_duplicate=False))
    axes: dict[tuple[str, int], TensorAxis] = {}

    def tensor_axis(fqn: str, axis: int, rows: int) -> TensorAxis:
        """One TensorAxis per tensor axis, shared by the groups holding it (so is its matrix)."""
        if (fqn, axis) not in axes:
            axes[(fqn, axis)] = TensorAxis(state[fqn].detach(), axis, rows)
        return axes[(fqn, axis)]

    views = []
    for group in graph.prunable if groups is None else groups:
        members = tuple(
            MemberSlice(m.fqn, m.role, tensor_axis(m.fqn, m.axis, len(m.positions)), m.positions, m.fqn in params)
            for m in group.members if m.fqn in state
        )
        views.append(GroupView(group.id, group.size, members))
    return views
