"""Shared machinery for Hessian-based criteria: which parameter elements belong to which channel of
a group, probe vectors over those elements, and colours (sets of groups that touch disjoint
tensors, so one Hessian-vector product serves all groups of a colour at once)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from structprune.criteria.base import GroupView, canonical_names


@dataclass(frozen=True, eq=False)
class ChannelElements:
    """For one group: per parameter name, a LongTensor shaped like the parameter holding the group
    channel of each element (-1 for elements outside the group)."""

    group: GroupView
    index: dict[str, torch.Tensor]

    def per_channel(self, values: dict[str, torch.Tensor]) -> np.ndarray:
        """Sum `values` (shaped like the parameters) over each channel's elements."""
        total = torch.zeros(self.group.size + 1, dtype=torch.float64)
        for name, idx in self.index.items():
            flat = idx.reshape(-1).cpu()
            total.index_add_(0, torch.where(flat >= 0, flat, self.group.size), values[name].reshape(-1).double().cpu())
        return total[:-1].numpy()

    def spread(self, per_channel: torch.Tensor, name: str) -> torch.Tensor:
        """A tensor shaped like parameter `name` holding each element's channel value (0 outside)."""
        idx = self.index[name]
        padded = torch.cat([per_channel.to(torch.float32), torch.zeros(1)]).to(idx.device)
        return padded[torch.where(idx >= 0, idx, self.group.size)]


def channel_elements(group: GroupView, model: nn.Module) -> ChannelElements:
    """Element -> channel maps for the group's parameter members, each tensor once under its canonical
    name (`canonical_names`: a tied tensor is one tensor)."""
    names = canonical_names(model)
    index: dict[str, torch.Tensor] = {}
    for m in group.members:
        if not m.is_param or names[m.fqn] in index:
            continue
        full = model.get_parameter(names[m.fqn])
        axis = m.axis
        if full.shape[axis] != len(m.positions):
            continue
        shape = [1] * full.ndim
        shape[axis] = len(m.positions)
        index[names[m.fqn]] = torch.as_tensor(m.positions, device=full.device).reshape(shape).expand(full.shape).clone()
    return ChannelElements(group, index)


def colours(elements: list[ChannelElements]) -> list[list[ChannelElements]]:
    """Greedy colouring: groups in one colour share no parameter tensor."""
    out: list[tuple[set[str], list[ChannelElements]]] = []
    for el in elements:
        names = set(el.index)
        for used, members in out:
            if not used & names:
                used |= names
                members.append(el)
                break
        else:
            out.append((names, [el]))
    return [members for _, members in out]


def rademacher(shape, generator: torch.Generator) -> torch.Tensor:
    """Random signs (+1/-1) from a seeded generator."""
    return torch.randint(0, 2, tuple(shape), generator=generator).float() * 2 - 1
