"""Channel gates: one multiplicative gate per prunable channel, and each channel's weight magnitude.

A gate g_c scales every parameter entry that channel c owns (on every member of its group: a conv's
output rows, its BatchNorm's weight and bias, the next conv's input columns). g = 1 is the dense model
and g_c = 0 removes channel c exactly as the rewrite does, so the loss as a function of g is the loss
along the directions structured pruning can move in. An entry owned by two channels (a conv weight
W[o, i], o of one group and i of another) is scaled by both gates.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from structprune.graph.channel_graph import ChannelGraph


@dataclass(frozen=True)
class GatedAxis:
    """One parameter axis under gates: `index[p]` is the gate of position p (`n` = the constant 1)."""

    axis: int
    index: torch.Tensor


@dataclass(frozen=True, eq=False)
class ChannelGates:
    """Where each of the `n` prunable channels of a ChannelGraph sits in the model's parameters.

    `groups` lists (group id, offset, size): channel c of group G is gate offset + c. `magnitude[k]` is
    the L2 norm of every parameter entry gate k scales (buffers such as running statistics left out).
    """

    n: int
    groups: tuple[tuple[str, int, int], ...]
    axes: dict[str, tuple[GatedAxis, ...]]
    magnitude: np.ndarray

    def parameters(self, model: nn.Module, gates: torch.Tensor) -> dict[str, torch.Tensor]:
        """The gated parameters (name -> tensor scaled by the gates), for torch.func.functional_call."""
        extended = torch.cat([gates, gates.new_ones(1)])
        params = dict(model.named_parameters())
        return {name: _scaled(params[name], axes, extended) for name, axes in self.axes.items()}

    def removal_order(self) -> np.ndarray:
        """Gates in the order magnitude pruning removes them (smallest first); each group's largest
        channel is left out, since a group cannot lose all its channels."""
        removable = np.ones(self.n, dtype=bool)
        for _, offset, size in self.groups:
            removable[offset + int(np.argmax(self.magnitude[offset:offset + size]))] = False
        order = np.argsort(self.magnitude, kind="stable")
        return order[removable[order]]


def channel_gates(graph: ChannelGraph, model: nn.Module) -> ChannelGates:
    """The gates of `graph`'s prunable groups on `model` (the model the graph was built from).

    >>> import torch
    >>> from structprune.api import analyze
    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> gates = channel_gates(analyze(net, torch.randn(1, 3)), net)
    >>> gates.n, sorted(gates.axes)
    (4, ['0.bias', '0.weight', '2.weight'])
    """
    params = dict(model.named_parameters())
    axes: dict[str, list[GatedAxis]] = {}
    groups, squares, offset = [], [], 0
    for group in graph.prunable:
        energy = np.zeros(group.size)
        for member in (m for m in group.members if m.fqn in params):
            index = np.where(member.positions >= 0, member.positions + offset, -1)
            axes.setdefault(member.fqn, []).append(GatedAxis(member.axis, torch.as_tensor(index)))
            energy += _per_channel_energy(params[member.fqn], member.axis, member.positions, group.size)
        groups.append((group.id, offset, group.size))
        squares.append(energy)
        offset += group.size
    fixed = {name: tuple(GatedAxis(a.axis, torch.where(a.index < 0, offset, a.index)) for a in gated)
             for name, gated in axes.items()}
    magnitude = np.sqrt(np.concatenate(squares)) if squares else np.zeros(0)
    return ChannelGates(offset, tuple(groups), fixed, magnitude)


def _per_channel_energy(tensor: torch.Tensor, axis: int, positions: np.ndarray, size: int) -> np.ndarray:
    """Sum of squared entries per group channel along `axis` (rows of other groups ignored)."""
    rows = tensor.detach().double().movedim(axis, 0).reshape(tensor.shape[axis], -1).pow(2).sum(1).numpy()
    out = np.zeros(size)
    mask = positions >= 0
    np.add.at(out, positions[mask], rows[mask])
    return out


def _scaled(tensor: torch.Tensor, axes: tuple[GatedAxis, ...], extended: torch.Tensor) -> torch.Tensor:
    for gated in axes:
        shape = [1] * tensor.dim()
        shape[gated.axis] = -1
        tensor = tensor * extended[gated.index].reshape(shape).to(tensor.dtype)
    return tensor
