"""The criterion interface. Criteria never see op types: a group hands them each member's tensor with
the member axis first, flattened to (axis_size, -1), plus which group channel each row belongs to."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class MemberSlice:
    """One member of a group: `tensor` is (axis_size, -1); `positions[p]` is the group channel of row
    p (-1 for rows of other groups); `role` is 'in', 'out' or 'elem'; `is_param` tells parameters
    from buffers."""

    fqn: str
    role: str
    tensor: torch.Tensor
    positions: np.ndarray
    is_param: bool

    def per_channel(self, row_values: torch.Tensor, size: int) -> np.ndarray:
        """Sum per-row values into the group's channels."""
        out = np.zeros(size, dtype=np.float64)
        mask = self.positions >= 0
        np.add.at(out, self.positions[mask], row_values.detach().double().cpu().numpy()[mask])
        return out


@dataclass(frozen=True, eq=False)
class GroupView:
    """What a criterion sees of one group."""

    group_id: str
    size: int
    members: tuple[MemberSlice, ...]


@dataclass(frozen=True, eq=False)
class ScoringContext:
    """Shared inputs: the model, example inputs, optional calibration data, and the seed."""

    model: torch.nn.Module
    example_inputs: Any
    data: Any = None
    seed: int = 0


class Criterion(Protocol):
    """score(groups, ctx) -> {group_id: importance per channel (higher = keep)}."""

    name: str
    needs_data: bool

    def score(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class PerGroupCriterion:
    """A criterion that scores each group on its own with `fn(group, ctx)`."""

    name: str
    fn: Callable[[GroupView, ScoringContext], np.ndarray]
    needs_data: bool = False
    description: str = ""

    def score(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, np.ndarray]:
        return {g.group_id: np.asarray(self.fn(g, ctx), dtype=np.float64) for g in groups}
