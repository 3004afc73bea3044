"""From a Plan to what survives: a keep flag per component, kept indices per tensor axis, new shapes."""
from __future__ import annotations

import numpy as np

from structprune.errors import PlanError, RewriteError
from structprune.graph.channel_graph import ChannelGraph
from structprune.ir.abstract import new_shape  # noqa: F401 - re-exported: rewrite.new_shape
from structprune.selection.plan import Plan, dropped_mask


def validate_plan(graph: ChannelGraph, plan: Plan) -> None:
    """Raise PlanError if the plan does not fit this model's groups."""
    known = {g.id: g for g in graph.groups}
    for gid, kept in plan.keep.items():
        if gid not in known:
            sample = ", ".join(sorted(known)[:8])
            raise PlanError(f"plan names unknown group '{gid}'; this model's groups include: {sample} "
                            f"({len(known)} in all; see `structprune inspect`)")
        group = known[gid]
        if plan.sizes.get(gid, group.size) != group.size:
            raise PlanError(f"group '{gid}' has {group.size} channels but the plan was made for "
                            f"{plan.sizes[gid]}; the plan belongs to another architecture")
        if not kept:
            raise PlanError(f"plan keeps no channel of group '{gid}'; keep at least one")
        if min(kept) < 0 or max(kept) >= group.size or len(set(kept)) != len(kept):
            raise PlanError(f"plan for group '{gid}' has indices outside 0..{group.size - 1} or repeats")
        if len(kept) < group.size and not group.prunable:
            reasons = "; ".join(str(r) for r in group.reasons)
            raise PlanError(f"plan prunes blocked group '{gid}' ({reasons})")


def component_keep(graph: ChannelGraph, plan: Plan) -> np.ndarray:
    """Boolean per component: False where the plan drops it."""
    validate_plan(graph, plan)
    keep = np.ones(int(graph.component.max()) + 1, dtype=bool)
    for group in graph.groups:
        kept = plan.keep.get(group.id)
        if kept is not None and len(kept) < group.size:
            keep[group.components[dropped_mask(group.size, kept)]] = False
    return keep


def kept_indices(graph: ChannelGraph, keep: np.ndarray) -> dict[str, dict[int, np.ndarray]]:
    """fqn -> {axis: kept positions} for every tensor that loses something."""
    result: dict[str, dict[int, np.ndarray]] = {}
    for fqn, maps in graph.state_maps.items():
        axes: dict[int, np.ndarray] = {}
        for smap in maps:
            mask = keep[graph.component[smap.ids]]
            for axis, kept_mask in _project(fqn, mask, smap.axis).items():
                axes[axis] = axes[axis] & kept_mask if axis in axes else kept_mask
        shrunk = {a: np.flatnonzero(m) for a, m in axes.items() if not m.all()}
        if shrunk:
            result[fqn] = shrunk
    return result


def _project(fqn: str, mask: np.ndarray, axis: int | None) -> dict[int, np.ndarray]:
    """Per-axis kept masks of one id map; a joint map must keep a product set (a sub-grid)."""
    axes = [axis] if axis is not None else [a for a, s in enumerate(mask.shape) if s > 1]
    out = {a: mask.any(axis=tuple(b for b in range(mask.ndim) if b != a)) for a in axes}
    if axis is None and len(axes) > 1:
        grid = np.ones(mask.shape, dtype=bool)
        for a, m in out.items():
            shape = [1] * mask.ndim
            shape[a] = m.size
            grid = grid & m.reshape(shape)
        if not np.array_equal(grid, np.broadcast_to(mask, grid.shape)):
            raise RewriteError(f"'{fqn}': the plan keeps a set of elements that is not a sub-grid, "
                               "so the tensor cannot be sliced axis by axis")
    return out


