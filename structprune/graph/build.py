"""build_channel_graph: run the rule table over a captured graph, solve the ties, assemble groups."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch import fx, nn

from structprune.capture import Captured
from structprune.errors import AnalysisError
from structprune.graph.abstract import Abstract
from structprune.graph.channel_graph import ChannelGraph, ChannelGroup, Member
from structprune.graph.reasons import Reason, ReasonKind
from structprune.graph.unify import IdSpace, Solution
from structprune.rules import DEFAULT_RULES, op_key, rule_unsupported, attention_tables
from structprune.rules.context import ROLE_IN, RuleContext, StateMap
from structprune.rules.modules import DEFAULT_MODULE_RULES, apply_module_rules


def build_channel_graph(
    captured: Captured,
    rules: Mapping = DEFAULT_RULES,
    modules: Mapping[str, nn.Module] | None = None,
    module_rules: Mapping = DEFAULT_MODULE_RULES,
    attention: str = "heads",
) -> ChannelGraph:
    """Analyse a captured model: which channels are coupled, which groups can be pruned and why not.
    `attention` picks the unit attention is pruned by: "heads" (whole heads) or "head_dims".

    >>> import torch
    >>> from structprune.capture import capture
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> cg = build_channel_graph(capture(net, torch.randn(1, 4)))
    >>> [(g.id, g.size, g.prunable) for g in cg.groups]
    [('0.weight:0', 8, True), ('2.weight:0', 2, False)]
    """
    rules, module_rules = attention_tables(attention, rules, module_rules)
    space = IdSpace()
    ctx = RuleContext(captured, space)
    for node in captured.graph.nodes:
        ctx.node = node
        _apply(ctx, node, rules)
    if modules:
        apply_module_rules(ctx, modules, module_rules)
    solution = space.solve()
    if _align_grids(ctx, solution):
        solution = space.solve()
    return _assemble(ctx, solution, attention)


def _align_grids(ctx: RuleContext, solution: Solution) -> bool:
    """A channel dim reshaped into a grid (groups x C/g, heads x head_dim) must be pruned as a sub-grid.
    That holds when its components vary along one grid dim only (whole heads, say). Otherwise tie the
    grid's columns (same index in the last dim across the other dims), as a channel shuffle needs."""
    changed = False
    for ids in ctx.grids:
        comp = solution.component[ids]
        dims = [d for d in range(ids.ndim) if ids.shape[d] > 1]
        if not any(_varies_only_along(comp, d, dims) for d in dims):
            for d in dims[:-1]:
                ctx.space.union(ids, ids.take([0], axis=d))
            changed = True
    return changed


def _varies_only_along(comp: np.ndarray, dim: int, dims: list[int]) -> bool:
    return all((comp == comp.take([0], axis=d)).all() for d in dims if d != dim)


def _apply(ctx: RuleContext, node: fx.Node, rules: Mapping) -> None:
    if node.op == "placeholder":
        return
    if node.op == "output":
        _protect_outputs(ctx, node)
        return
    if node.op != "call_function":
        rule_unsupported(ctx, node, f"{node.op} node")
        return
    rule = rules.get(op_key(node.target), rule_unsupported)
    try:
        rule(ctx, node)
    except Exception as exc:  # noqa: BLE001 - a rule bug must name the node
        raise AnalysisError(
            f"rule for {op_key(node.target)} failed on node {node.format_node()}: {exc}"
        ) from exc


def _protect_outputs(ctx: RuleContext, node: fx.Node) -> None:
    for index, arg in enumerate(_flatten(node.args)):
        value = ctx.value(arg)
        if isinstance(value, Abstract):
            ctx.space.block(value.ids, Reason(ReasonKind.MODEL_OUTPUT, f"output {index}", arg.name))


def _flatten(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _flatten(a)
        elif a is not None:
            yield a


def _assemble(ctx: RuleContext, solution: Solution, attention: str) -> ChannelGraph:
    comp = solution.component
    members, vectors = _member_vectors(ctx.state_maps, comp)
    groups = _group_components(members, vectors, solution)
    return ChannelGraph(tuple(groups), ctx.captured, comp, dict(ctx.state_maps), dict(ctx.values),
                        attention)


def _member_vectors(state_maps: dict[str, list[StateMap]], comp: np.ndarray):
    """(fqn, axis, role) per member axis, and the component of each position along it."""
    members, vectors = [], []
    for fqn, maps in state_maps.items():
        for smap in maps:
            for axis in _axes(smap):
                vec = comp[_along(smap.ids, axis)]
                if smap.axis is None and vec.size > 1 and (vec == vec[0]).all():
                    continue
                members.append((fqn, axis, smap.role))
                vectors.append(vec)
    return members, vectors


def _axes(smap: StateMap) -> list[int]:
    if smap.axis is not None:
        return [smap.axis]
    return [a for a, s in enumerate(smap.ids.shape) if s > 1]


def _along(ids: np.ndarray, axis: int) -> np.ndarray:
    index = tuple(slice(None) if a == axis else 0 for a in range(ids.ndim))
    return ids[index].ravel()


def _group_components(members, vectors, solution: Solution) -> list[ChannelGroup]:
    if not members:
        return []
    comps = np.concatenate(vectors)
    owner = np.concatenate([np.full(v.size, i) for i, v in enumerate(vectors)])
    keys = np.unique(comps * len(members) + owner)  # unique (component, member) pairs, sorted by component
    pair_comp, pair_member = keys // len(members), keys % len(members)
    starts = np.flatnonzero(np.r_[True, pair_comp[1:] != pair_comp[:-1]])
    by_key: dict[tuple, list[int]] = {}
    for comp, sig in zip(pair_comp[starts].tolist(), np.split(pair_member, starts[1:])):
        by_key.setdefault((tuple(sig.tolist()), solution.is_blocked(comp)), []).append(comp)
    ncomp = int(comps.max()) + 1
    comp_group = np.full(ncomp, -1)
    comp_channel = np.full(ncomp, -1)
    specs = []
    for (sig, _), cs in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        ordered = _in_member_order(np.asarray(cs, dtype=np.int64), vectors[sig[0]])
        gi = len(specs)
        comp_group[ordered] = gi
        comp_channel[ordered] = np.arange(ordered.size)
        specs.append((sig, ordered))
    return _make_groups(specs, members, vectors, comp_group, comp_channel, solution)


def _in_member_order(components: np.ndarray, first_member: np.ndarray) -> np.ndarray:
    """The components sorted by where they first appear along the group's first member axis."""
    values, first_seen = np.unique(first_member, return_index=True)
    position = first_seen[np.searchsorted(values, components)]
    return components[np.argsort(position, kind="stable")]


def _make_groups(specs, members, vectors, comp_group, comp_channel, solution) -> list[ChannelGroup]:
    groups, seen = [], {}
    for gi, (sig, ordered) in enumerate(specs):
        group_members = tuple(
            Member(*members[m], positions=np.where(comp_group[vectors[m]] == gi, comp_channel[vectors[m]], -1))
            for m in sig
        )
        base = f"{members[sig[0]][0]}:{members[sig[0]][1]}"
        seen[base] = seen.get(base, 0) + 1
        gid = base if seen[base] == 1 else f"{base}#{seen[base]}"
        reasons = tuple(sorted({r for c in ordered.tolist() for r in solution.reasons.get(c, ())}, key=str))
        ops = tuple(sorted({o for c in ordered.tolist() for o in solution.inexact_ops.get(c, ())}))
        has_consumer = any(m.role == ROLE_IN for m in group_members)
        if not has_consumer and not ops:
            ops = ("no consumer layer",)
        groups.append(ChannelGroup(gid, int(ordered.size), group_members, not reasons, reasons,
                                   not ops, ops, ordered))
    return groups
