"""A one-op graph for rule tests: `op_groups(op, *shapes)` puts `op` between parameter probes, analyses
the module and returns the groups the op forms, in a form a test asserts on directly.

Each input `i` of the op (shape `S`) is made by a probe layer `in{i}` from a 3-channel model input, and
each tensor the op returns, `j`, is read by a probe `out{j}` with 2 output channels. A probe is a 1x1
Conv2d for a 4-d tensor (channels at dim 1) and a Linear over the last dim otherwise. So the op's
input channels are the rows of `in{i}.weight` and its output channels the columns of `out{j}.weight`,
and each group the op creates or ties is a group of those axes. The probes' own input and output axes
(blocked as model input / model output) form groups of their own, which are left out.

    >>> import torch
    >>> cat = op_groups(lambda a, b: torch.cat([a, b], 1), (2, 4, 3, 3), (2, 6, 3, 3))
    >>> [(g.size, g.prunable, g.positions["out0"]) for g in cat.groups]
    [(4, True, (0, 1, 2, 3, -1, -1, -1, -1, -1, -1)), (6, True, (-1, -1, -1, -1, 0, 1, 2, 3, 4, 5))]
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import structprune
from structprune.graph.channel_graph import ChannelGraph, ChannelGroup
from structprune.ir.reasons import ReasonKind
from structprune.rules import DEFAULT_RULES

SEED_CHANNELS, OUT_CHANNELS = 3, 2


@dataclass(frozen=True)
class OpGroup:
    """One group through the op. `positions[probe]`: for each channel of that probe's side of the op
    (`in0`, `out1`, ...), the group's local channel it holds, or -1 where it belongs to another group;
    probes the group does not reach are absent. `members`: every member ref, the op's own included."""

    id: str
    size: int
    prunable: bool
    exact: bool
    reasons: frozenset[ReasonKind]
    details: tuple[str, ...]
    inexact_ops: tuple[str, ...]
    assumptions: tuple[str, ...]
    positions: Mapping[str, tuple[int, ...]]
    members: frozenset[str]


@dataclass(frozen=True)
class OpAnalysis:
    """The groups the op forms (in the analysis' order) and the whole ChannelGraph, for anything else."""

    groups: tuple[OpGroup, ...]
    graph: ChannelGraph

    def of(self, probe: str) -> OpGroup:
        """The only group holding channels of `probe` (e.g. 'in0'); fails if none or several do."""
        found = [g for g in self.groups if probe in g.positions]
        assert len(found) == 1, f"{probe} is in {len(found)} groups: {[g.id for g in found]}"
        return found[0]


class OneOp(nn.Module):
    """Probes `in{i}` -> op -> probes `out{j}`; the op is `self.op` when it is a module (its parameters
    become members `op.*`), a plain attribute otherwise."""

    def __init__(self, op: Callable, in_shapes: list[tuple[int, ...]], out_shapes: list[tuple[int, ...]]) -> None:
        super().__init__()
        self.op, self.n_in, self.n_out = op, len(in_shapes), len(out_shapes)
        for i, shape in enumerate(in_shapes):
            self.add_module(f"in{i}", _probe(SEED_CHANNELS, _channels(shape), len(shape)))
        for j, shape in enumerate(out_shapes):
            self.add_module(f"out{j}", _probe(_channels(shape), OUT_CHANNELS, len(shape)))

    def forward(self, *seeds: torch.Tensor):
        outs = _tensors(self.op(*(getattr(self, f"in{i}")(seed) for i, seed in enumerate(seeds))))
        return tuple(getattr(self, f"out{j}")(out) for j, out in enumerate(outs))


def op_groups(op: Callable, *shapes: tuple[int, ...], rules: Mapping = DEFAULT_RULES, **analyze_options: Any
              ) -> OpAnalysis:
    """Analyse `op` applied to inputs of `shapes` (4-d: N, C, H, W; otherwise channels last) with the rule
    table `rules`; `analyze_options` go to `structprune.analyze` (e.g. attention="head_dims")."""
    gen = torch.Generator().manual_seed(0)
    example = [torch.randn(*s, generator=gen) for s in shapes]
    with torch.no_grad():
        out_shapes = [tuple(t.shape) for t in _tensors(op(*example))]
    model = OneOp(op, [tuple(s) for s in shapes], out_shapes).eval()
    seeds = tuple(torch.randn(*_seed_shape(s), generator=gen) for s in shapes)
    graph = structprune.analyze(model, seeds[0] if len(seeds) == 1 else seeds, rules=rules, **analyze_options)
    probes = {**{f"in{i}.weight:0": f"in{i}" for i in range(len(shapes))},
              **{f"out{j}.weight:1": f"out{j}" for j in range(len(out_shapes))}}
    groups = tuple(_op_group(g, probes) for g in graph.groups
                   if any(m.ref in probes or m.ref.startswith("op.") for m in g.members))
    return OpAnalysis(groups, graph)


def _op_group(group: ChannelGroup, probes: Mapping[str, str]) -> OpGroup:
    positions = {probes[m.ref]: tuple(int(p) for p in m.positions) for m in group.members if m.ref in probes}
    return OpGroup(group.id, group.size, group.prunable, group.exact, frozenset(r.kind for r in group.reasons),
                   tuple(str(r) for r in group.reasons), tuple(group.inexact_ops), tuple(group.assumptions),
                   positions, frozenset(m.ref for m in group.members))


def _tensors(result: Any) -> list[torch.Tensor]:
    items = result if isinstance(result, (tuple, list)) else [result]
    return [t for t in items if isinstance(t, torch.Tensor)]


def _channels(shape: tuple[int, ...]) -> int:
    return shape[1] if len(shape) == 4 else shape[-1]


def _seed_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[0], SEED_CHANNELS, *shape[2:]) if len(shape) == 4 else (*shape[:-1], SEED_CHANNELS)


def _probe(cin: int, cout: int, ndim: int) -> nn.Module:
    return nn.Conv2d(cin, cout, 1) if ndim == 4 else nn.Linear(cin, cout)
