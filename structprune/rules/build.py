"""build_channel_graph: run the rule table over a captured graph, solve the ties, assemble groups."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.sparse import csr_matrix
from torch import fx, nn

from structprune.capture import Captured
from structprune.errors import AnalysisError
from structprune.graph.channel_graph import ChannelGraph, ChannelGroup, Member
from structprune.ir.abstract import Abstract
from structprune.ir.reasons import Reason, ReasonKind
from structprune.ir.roles import ROLE_IN, StateMap
from structprune.ir.unify import IdSpace, Solution
from structprune.rules import DEFAULT_RULES, attention_tables, op_key, rule_unsupported
from structprune.rules.context import RuleContext
from structprune.rules.modules import DEFAULT_MODULE_RULES, apply_module_rules, with_input_width_ties
from structprune.rules.split_sizes import check_sized_splits


def build_channel_graph(
    captured: Captured,
    rules: Mapping = DEFAULT_RULES,
    modules: Mapping[str, nn.Module] | None = None,
    module_rules: Mapping = DEFAULT_MODULE_RULES,
    attention: str = "heads",
    input_width_ties: frozenset[type] = frozenset(),
) -> ChannelGraph:
    """Analyse a captured model: which channels are coupled, which groups can be pruned and why not.
    `attention` picks the unit attention is pruned by: "heads" (whole heads) or "head_dims".
    `input_width_ties`: attention classes whose heads x head_dim is tied to their input width.

    >>> import torch
    >>> from structprune.capture import capture
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> cg = build_channel_graph(capture(net, torch.randn(1, 4)))
    >>> [(g.id, g.size, g.prunable) for g in cg.groups]
    [('0.weight:1', 4, False), ('0.weight:0', 8, True), ('2.weight:0', 2, False)]
    """
    rules, module_rules = attention_tables(attention, rules, module_rules)
    if input_width_ties:
        module_rules = with_input_width_ties(module_rules, input_width_ties)
    space = IdSpace()
    ctx = RuleContext(captured, space)
    for node in captured.graph.nodes:
        ctx.node = node
        _apply(ctx, node, rules)
    if modules:
        apply_module_rules(ctx, modules, module_rules)
    check_sized_splits(ctx, modules)
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
    """Components touching the same member axes (and equally blocked) form one group."""
    if not members:
        return []
    incidence = _incidence(vectors)
    ncomp = incidence.shape[0]
    blocked = np.zeros(ncomp, dtype=bool)
    blocked[[c for c in solution.reasons if c < ncomp]] = True
    by_key: dict[tuple, list[range]] = {}
    for sig, is_blocked, comps in _signature_runs(incidence, blocked):
        by_key.setdefault((sig, is_blocked), []).append(comps)
    comp_group = np.full(ncomp, -1)
    comp_channel = np.full(ncomp, -1)
    specs = []
    for (sig, _), runs in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        ordered = _in_member_order(np.concatenate([np.arange(r.start, r.stop) for r in runs]), vectors[sig[0]])
        comp_group[ordered] = len(specs)
        comp_channel[ordered] = np.arange(ordered.size)
        specs.append((sig, ordered))
    return _make_groups(specs, members, vectors, comp_group, comp_channel, solution)


def _incidence(vectors) -> csr_matrix:
    """Component x member matrix: row c lists the member axes component c appears on (sorted, once)."""
    comps = np.concatenate(vectors)
    owner = np.repeat(np.arange(len(vectors)), [v.size for v in vectors])
    shape = (int(comps.max()) + 1, len(vectors))
    incidence = csr_matrix((np.ones(comps.size), (comps, owner)), shape=shape)
    incidence.sum_duplicates()  # (the constructor did it already) sorted columns, each once
    return incidence


def _signature_runs(incidence: csr_matrix, blocked: np.ndarray):
    """(member indices, blocked, components) per run of consecutive components with the same row.
    Consecutive components mostly come from one axis, so runs are far fewer than components."""
    ncomp = blocked.size
    starts = np.flatnonzero(_differs_from_previous(incidence) | np.r_[True, blocked[1:] != blocked[:-1]])
    for start, end in zip(starts.tolist(), starts[1:].tolist() + [ncomp]):
        member_ids = incidence.indices[incidence.indptr[start]:incidence.indptr[start + 1]]
        if member_ids.size:  # components on no member axis belong to no group
            yield tuple(member_ids.tolist()), bool(blocked[start]), range(start, end)


def _differs_from_previous(rows: csr_matrix) -> np.ndarray:
    """Per row of a canonical CSR matrix: whether its column list differs from the previous row's."""
    lengths = np.diff(rows.indptr)
    same_length = np.r_[False, lengths[1:] == lengths[:-1]]
    row_of_entry = np.repeat(np.arange(lengths.size), lengths)
    # entry k of a row sits at k - length in the previous row when the two rows have the same length
    same_slot_before = np.arange(rows.indices.size) - lengths[row_of_entry]
    mismatch = rows.indices != rows.indices[same_slot_before]
    return ~same_length | (np.bincount(row_of_entry, weights=mismatch, minlength=lengths.size) > 0)


def _in_member_order(components: np.ndarray, first_member: np.ndarray) -> np.ndarray:
    """The components sorted by where they first appear along the group's first member axis."""
    values, first_seen = np.unique(first_member, return_index=True)
    position = first_seen[np.searchsorted(values, components)]
    return components[np.argsort(position, kind="stable")]


def _make_groups(specs, members, vectors, comp_group, comp_channel, solution) -> list[ChannelGroup]:
    groups, seen = [], {}
    group_reasons = _per_group(solution.reasons, comp_group, len(specs))
    group_ops = _per_group(solution.inexact_ops, comp_group, len(specs))
    group_assumptions = _per_group(solution.assumptions, comp_group, len(specs))
    positions = _member_positions(specs, vectors, comp_group, comp_channel)
    for gi, (sig, ordered) in enumerate(specs):
        group_members = tuple(Member(*members[m], positions=positions[gi, m]) for m in sig)
        base = f"{members[sig[0]][0]}:{members[sig[0]][1]}"
        seen[base] = seen.get(base, 0) + 1
        gid = base if seen[base] == 1 else f"{base}#{seen[base]}"
        reasons = tuple(sorted(group_reasons[gi], key=str))
        ops = tuple(sorted(group_ops[gi]))
        has_consumer = any(m.role == ROLE_IN for m in group_members)
        if not has_consumer and not ops:
            ops = ("no consumer layer",)
        groups.append(ChannelGroup(gid, int(ordered.size), group_members, not reasons, reasons,
                                   not ops, ops, ordered, tuple(sorted(group_assumptions[gi]))))
    return groups


def _member_positions(specs, vectors, comp_group, comp_channel) -> dict[tuple[int, int], np.ndarray]:
    """(group, member) -> the group channel at each position of the member axis, -1 where another
    group owns the position. One array operation per member axis covers all of its groups."""
    groups_of: dict[int, list[int]] = {}
    for gi, (sig, _) in enumerate(specs):
        for m in sig:
            groups_of.setdefault(m, []).append(gi)
    positions = {}
    for m, gis in groups_of.items():
        rows = np.where(comp_group[vectors[m]] == np.array(gis)[:, None], comp_channel[vectors[m]], -1)
        positions.update(((gi, m), row) for gi, row in zip(gis, rows))
    return positions


def _per_group(per_component: dict[int, tuple], comp_group: np.ndarray, ngroups: int) -> list[set]:
    """A per-component table (reasons, inexact ops) merged over each group's components."""
    merged: list[set] = [set() for _ in range(ngroups)]
    for comp, entries in per_component.items():
        if comp < comp_group.size and comp_group[comp] >= 0:
            merged[comp_group[comp]].update(entries)
    return merged
