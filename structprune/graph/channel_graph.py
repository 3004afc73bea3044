"""ChannelGroup and ChannelGraph: the analysis result every later stage reads.

A *component* is a set of channel elements that must go together (one filter with the BN entries and
next-layer input columns it feeds, or one whole attention head). Components touching the same set of
parameter axes form a *group*; channel i of a group is its i-th component in the order of the group's
first member axis. Pruning removes components.

`ChannelGraph.to_networkx()` hands the same result to networkx: the captured ops as nodes (data edges
between them), each node tagged with the groups its value carries, and the group table beside them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import numpy as np
from torch import fx

from structprune.graph.cost import group_dicts
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

    def to_networkx(self) -> nx.MultiDiGraph:
        """The captured graph with its channel groups, for networkx algorithms and drawing.

        A MultiDiGraph, so an op that reads one value twice (`x * x`) keeps both edges. Nodes are the
        captured graph's nodes by fx name (model inputs, parameters, buffers and constants as placeholders;
        ops; the output), with `op` (fx op), `kind` (input, parameter, buffer, constant, op or output),
        `target` (`aten.conv2d.default`), `label` (`conv2d`, or a parameter's FQN), `module` and
        `module_type` (the owning module, from `nn_module_stack`; "" for the root), `shape` (the value's
        shape; a tuple of shapes for several outputs; None if not a tensor) and `groups` (the ids of the
        groups whose channels the node's value carries; a parameter's: the groups it is a member of; the
        output's: those of what it returns). An edge runs from each input to its user, keyed by the
        argument's position (`"1"`, `"0.2"` inside a list, or a keyword). `G.graph["groups"]` is the group
        table by id, in `groups` order: `ChannelGroup.to_json()` plus `why` (the reasons as `inspect` and
        report.json print them), `params` (member FQNs) and `nodes` (the nodes that carry the group).

        >>> import torch
        >>> from torch import nn
        >>> from structprune.api import analyze
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> G = analyze(net, torch.randn(1, 4)).to_networkx()
        >>> G.nodes["relu"]["module"], G.nodes["relu"]["shape"], G.nodes["relu"]["groups"]
        ('1', (1, 8), ('0.weight:0',))
        >>> list(G.predecessors("linear_1"))
        ['relu', 'p_2_weight', 'p_2_bias']
        >>> G.graph["groups"]["2.weight:0"]["prunable"], G.graph["groups"]["2.weight:0"]["why"]
        (False, 'tied to a model output: output 0 (node linear_1)')
        """
        owner = np.full(int(self.component.max(initial=0)) + 1, -1)
        for index, g in enumerate(self.groups):
            owner[g.components] = index
        G = nx.MultiDiGraph()
        for node in self.captured.graph.nodes:
            indices = _carried(self, node, owner, G)
            G.add_node(node.name, **_node_attributes(self.captured, node),
                       groups=tuple(self.groups[i].id for i in sorted(indices)))
            G.add_edges_from((arg.name, node.name, key) for key, arg in _data_inputs(node.args, node.kwargs))
        why = {row["id"]: row["why"] for row in group_dicts(self)}
        carriers = {g.id: [n for n, ids in G.nodes(data="groups") if g.id in ids] for g in self.groups}
        G.graph["groups"] = {g.id: {**g.to_json(), "why": why[g.id], "params": g.member_fqns(),
                                    "nodes": carriers[g.id]} for g in self.groups}
        return G


def _why(g: ChannelGroup) -> str:
    if g.reasons:
        return "; ".join(sorted({str(r) for r in g.reasons}))[:120]
    if g.inexact_ops:
        return "mixed by " + ", ".join(g.inexact_ops)
    return ""


def _carried(graph: ChannelGraph, node: fx.Node, owner: np.ndarray, G: nx.MultiDiGraph) -> set[int]:
    """Indices of the groups a node's value carries (see `to_networkx`)."""
    if node.op == "output":
        ids = {gid for arg in node.all_input_nodes for gid in G.nodes[arg.name]["groups"]}
        return {i for i, g in enumerate(graph.groups) if g.id in ids}
    fqn = graph.captured.state_fqn.get(node.name)
    if fqn is not None:
        return {i for i, g in enumerate(graph.groups) if any(m.fqn == fqn for m in g.members)}
    return _value_groups(graph.values.get(node.name), graph.component, owner)


def _value_groups(value, component: np.ndarray, owner: np.ndarray) -> set[int]:
    if isinstance(value, (tuple, list)):
        return set().union(*(_value_groups(v, component, owner) for v in value))
    ids = getattr(value, "ids", None)
    if ids is None:
        return set()
    indices = owner[np.unique(component[ids])]
    return set(indices[indices >= 0].tolist())


def _node_attributes(captured, node: fx.Node) -> dict:
    signature = captured.program.graph_signature
    fqn = captured.state_fqn.get(node.name)
    if node.op == "placeholder":
        kind = ("parameter" if node.name in signature.inputs_to_parameters else "buffer" if fqn is not None
                else "input" if node.name in captured.user_inputs else "constant")
    else:
        kind = {"call_function": "op", "output": "output"}.get(node.op, node.op)
    packet = getattr(node.target, "overloadpacket", None)
    label = fqn or getattr(packet or node.target, "__name__", str(node.target))
    module, module_type = (fqn.rpartition(".")[0], "") if fqn else _owning_module(node)
    return {"op": node.op, "kind": kind, "target": str(node.target), "label": label, "module": module,
            "module_type": module_type, "shape": _shape_of(node.meta.get("val"))}


def _owning_module(node: fx.Node) -> tuple[str, str]:
    """(FQN, class name) of the innermost module the node ran in; ("", "") outside any."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    fqn, cls = list(stack.values())[-1]
    return fqn, getattr(cls, "__name__", str(cls)).rsplit(".", 1)[-1]


def _shape_of(value):
    if isinstance(value, (tuple, list)):
        return tuple(_shape_of(v) for v in value)
    shape = getattr(value, "shape", None)
    return tuple(int(s) for s in shape) if shape is not None else None


def _data_inputs(args, kwargs, prefix: str = ""):
    """(position, node) for every fx.Node among a node's arguments, nested lists included."""
    items = [*((str(i), a) for i, a in enumerate(args)), *kwargs.items()]
    for key, arg in items:
        if isinstance(arg, fx.Node):
            yield prefix + key, arg
        elif isinstance(arg, (tuple, list)):
            yield from _data_inputs(arg, {}, f"{prefix}{key}.")
