"""What a plan would cost, without rewriting the model: the pruned model's MACs and parameter count read
from the ChannelGraph alone, so a budget search (`selection.targets`) can try many candidate plans.

A candidate is a keep flag per *component* (`ChannelGraph.component`'s id space). Every graph value and
every parameter axis carries component ids, so its pruned size along a channel dim is the number of
positions with a kept component (the rewrite slices the same positions, `rewrite.keep`). MACs apply
graph.cost's rules (those of `macs_of`) to the pruned shapes of each MAC op's operands and result;
parameters multiply each parameter's pruned axis sizes. Both match a count on the rewritten model
(`tests/unit/test_budget_targets.py` checks this on zoo models); what they cannot foresee is verification
keeping groups whole afterwards, which the caller measures on the verified model.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from torch import fx

from structprune.graph.cost import _MAC_RULES  # the one table of MAC formulas, applied here to pruned shapes
from structprune.ir.abstract import Abstract, new_shape
from structprune.ir.ops import op_base
from structprune.selection.plan import Plan, dropped_mask


class _Sized:
    """A graph value as the MAC rules read it (`.shape`), at its pruned size."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape


class PlanCost:
    """MACs and parameters of a ChannelGraph's model after a candidate plan (see the module docstring).

    >>> import torch
    >>> from torch import nn
    >>> from structprune.api import analyze
    >>> graph = analyze(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(1, 4))
    >>> cost = PlanCost(graph)
    >>> cost.dense, cost.of_plan(Plan({"0.weight:0": (0, 1)}, {"0.weight:0": 8}))
    ((48, 58), (12, 16))
    """

    def __init__(self, graph) -> None:
        self.graph = graph
        self._groups = {g.id: g for g in graph.groups}
        self._ncomp = int(graph.component.max(initial=0)) + 1
        self._params = _parameters(graph)
        self._nodes = [(node, op_base(node.target), _MAC_RULES[op_base(node.target)])
                       for node in graph.captured.graph.nodes
                       if node.op == "call_function" and op_base(node.target) in _MAC_RULES]
        self.dense = self.of_keep(np.ones(self._ncomp, dtype=bool))

    def of_plan(self, plan: Plan) -> tuple[int, int]:
        """(MACs, params) of the model `plan` would make."""
        return self.of_counts({g: np.asarray(k, dtype=np.int64) for g, k in plan.keep.items()})

    def of_counts(self, kept: Mapping[str, np.ndarray]) -> tuple[int, int]:
        """(MACs, params) when each group keeps the channel indices in `kept` (absent groups stay whole)."""
        keep = np.ones(self._ncomp, dtype=bool)
        for gid, indices in kept.items():
            group = self._groups[gid]
            if len(indices) < group.size:
                keep[group.components[dropped_mask(group.size, indices)]] = False
        return self.of_keep(keep)

    def of_keep(self, keep: np.ndarray) -> tuple[int, int]:
        """(MACs, params) for a keep flag per component."""
        component = self.graph.component
        params = {name: _pruned_shape(shape, maps, keep, component) for name, (shape, maps) in self._params.items()}

        def shape(node: fx.Node) -> tuple[int, ...]:
            if node.name in params:
                return params[node.name]
            value = self.graph.values.get(node.name)
            if isinstance(value, Abstract) and value.ids.ndim == value.ndim:
                return new_shape(value, keep, component)
            return _dense_shape(node)

        macs = sum(rule(op, tuple(_Sized(shape(a)) if isinstance(a, fx.Node) else a for a in node.args),
                        _Sized(shape(node))) for node, op, rule in self._nodes)
        return int(macs), int(sum(math.prod(s) for s in params.values()))


def _dense_shape(node: fx.Node) -> tuple[int, ...]:
    val = node.meta.get("val")
    return tuple(int(s) for s in getattr(val, "shape", ()))


def _parameters(graph) -> dict[str, tuple[tuple[int, ...], list]]:
    """Placeholder name -> (dense shape, id maps) per parameter of the captured program (each once, as
    `count_params` counts them)."""
    by_placeholder = graph.captured.program.graph_signature.inputs_to_parameters  # a property: read it once
    return {node.name: (_dense_shape(node), graph.state_maps.get(by_placeholder[node.name], []))
            for node in graph.captured.graph.nodes if node.op == "placeholder" and node.name in by_placeholder}


def _pruned_shape(shape: tuple[int, ...], maps, keep: np.ndarray, component: np.ndarray) -> tuple[int, ...]:
    """A parameter's shape after pruning: each mapped axis keeps the positions every map keeps there."""
    kept: dict[int, np.ndarray] = {}
    for smap in maps:
        mask = keep[component[smap.ids]]
        if smap.axis is not None:  # one axis's ids (a channel vector): nothing to reduce
            kept[smap.axis] = kept[smap.axis] & mask.ravel() if smap.axis in kept else mask.ravel()
            continue
        for axis in [a for a, s in enumerate(mask.shape) if s > 1]:
            along = mask.any(axis=tuple(b for b in range(mask.ndim) if b != axis))
            kept[axis] = kept[axis] & along if axis in kept else along
    return tuple(int(kept[a].sum()) if a in kept and kept[a].size == s else s for a, s in enumerate(shape))
