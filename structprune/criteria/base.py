"""The criterion interface. Criteria never see op types: a group hands them each member's tensor with
the member axis first, flattened to (axis_size, -1), plus which group channel each row belongs to."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import numpy as np
import torch


@dataclass(frozen=True, eq=False)
class TensorAxis:
    """One axis of a member's whole tensor `full` (detached). `matrix` is `full` with that axis first
    as (rows, -1): built on first use (an inner axis needs a copy) and shared by every group holding
    this axis, so criteria that never read it never pay for it."""

    full: torch.Tensor
    axis: int
    rows: int

    @cached_property
    def matrix(self) -> torch.Tensor:
        return self.full.movedim(self.axis, 0).reshape(self.rows, -1)


@dataclass(frozen=True, eq=False)
class MemberSlice:
    """One member of a group: `source` is its tensor axis; `positions[p]` is the group channel of row
    p (-1 for rows of other groups); `role` is 'in', 'out' or 'elem'; `is_param` tells parameters
    from buffers."""

    fqn: str
    role: str
    source: TensorAxis
    positions: np.ndarray
    is_param: bool

    @property
    def tensor(self) -> torch.Tensor:
        """The member's tensor with its axis first, flattened to (axis_size, -1)."""
        return self.source.matrix

    @property
    def full(self) -> torch.Tensor:
        """The member's whole tensor (detached), in its own layout."""
        return self.source.full

    @property
    def axis(self) -> int:
        """The axis of `full` that the member's rows run along."""
        return self.source.axis

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
    """score(groups, ctx) -> {group_id: importance per channel (higher = keep)}. Optional attributes:
    `select` (the criterion chooses channels itself at given counts) and `comparable_scores` (True: scores
    are in one unit across groups, so global allocation ranks them without normalising by group means)."""

    name: str
    needs_data: bool

    def score(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class Selection:
    """What a selecting criterion chose: kept channel indices per group (sorted), and JSON-able
    extras for the plan's meta (e.g. `channel_scales` of a sampled selection)."""

    keep: Mapping[str, tuple[int, ...]]
    meta: Mapping[str, Any] = field(default_factory=dict)


# The plan meta key of a sampled selection's per-channel factors, {group_id: [factor per kept channel]};
# calibrate.apply_channel_scales multiplies the consumers' weights by them after the rewrite.
SCALES_KEY = "channel_scales"


@runtime_checkable
class SelectingCriterion(Protocol):
    """A criterion whose method is not a plain top-k of scores (i-SpaSP, coreset allocation,
    iterative DropNet): given the planner's keep count per group, it chooses the kept channels
    itself. It may move counts between groups when its method allocates a budget (coreset), but
    keeps the planner's total size (channels, or parameters where stated)."""

    name: str
    needs_data: bool

    def score(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, np.ndarray]: ...

    def select(self, groups: list[GroupView], ctx: ScoringContext,
               keep_counts: Mapping[str, int]) -> Selection: ...


@dataclass(frozen=True)
class PerGroupCriterion:
    """A criterion that scores each group on its own with `fn(group, ctx)`."""

    name: str
    fn: Callable[[GroupView, ScoringContext], np.ndarray]
    needs_data: bool = False
    description: str = ""

    def score(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, np.ndarray]:
        return {g.group_id: np.asarray(self.fn(g, ctx), dtype=np.float64) for g in groups}


def canonical_names(model: torch.nn.Module) -> dict[str, str]:
    """Every parameter name -> the name `model.named_parameters()` lists its tensor under. A tied tensor
    (an LM head sharing the input embedding) has several names, and graph members may use any of them.

    >>> net = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 5, bias=False))
    >>> net[1].weight = net[0].weight
    >>> canonical_names(net)
    {'0.weight': '0.weight', '1.weight': '0.weight'}
    """
    first = {id(p): name for name, p in model.named_parameters()}
    return {name: first[id(p)] for name, p in model.named_parameters(remove_duplicate=False)}


def rows_of(member: MemberSlice, values: torch.Tensor) -> torch.Tensor:
    """`values` (shaped like the member's whole tensor) laid out like `member.tensor`: (rows, -1)."""
    return values.movedim(member.axis, 0).reshape(len(member.positions), -1)
