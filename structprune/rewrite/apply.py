"""rewrite_model: apply a Plan to a deep copy of the model, keeping classes, FQNs and state_dict keys."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import fx, nn

from structprune.errors import RewriteError
from structprune.graph.channel_graph import ChannelGraph
from structprune.rewrite.graph_module import fix_literal_shapes
from structprune.rewrite.keep import component_keep, kept_indices
from structprune.rewrite.shrink import refresh_attributes, snapshot
from structprune.select.plan import Plan


def rewrite_model(model: nn.Module, graph: ChannelGraph, plan: Plan) -> nn.Module:
    """A smaller copy of `model` with the plan's dropped channels physically removed."""
    keep = component_keep(graph, plan)
    indices = kept_indices(graph, keep)
    pruned = copy.deepcopy(model)
    aliases = _tensor_aliases(pruned)
    modules = list(pruned.modules())
    before = [snapshot(m) for m in modules]
    for fqn, axes in indices.items():
        _tensor_id(pruned, fqn)
        _slice_everywhere(pruned, fqn, axes, aliases)
    for module, old in reversed(list(zip(modules, before))):  # children before parents
        refresh_attributes(module, old, graph.attention)
    if isinstance(pruned, fx.GraphModule):
        fix_literal_shapes(pruned, graph, keep)
    return pruned


def _tensor_aliases(model: nn.Module) -> dict[int, list[tuple[nn.Module, str, bool]]]:
    """id(tensor) -> every (module, attribute, is_parameter) holding it (tied weights included)."""
    found: dict[int, list] = {}
    for module in model.modules(remove_duplicate=False) if _supports_dupes() else model.modules():
        for name, p in module._parameters.items():
            if p is not None:
                found.setdefault(id(p), []).append((module, name, True))
        for name, b in module._buffers.items():
            if b is not None:
                found.setdefault(id(b), []).append((module, name, False))
    return {k: list({(id(m), n): (m, n, p) for m, n, p in v}.values()) for k, v in found.items()}


def _supports_dupes() -> bool:
    import inspect

    return "remove_duplicate" in inspect.signature(nn.Module.modules).parameters


def _tensor_id(model: nn.Module, fqn: str) -> int:
    owner, _, attr = fqn.rpartition(".")
    try:
        return id(getattr(model.get_submodule(owner) if owner else model, attr))
    except AttributeError as exc:
        raise RewriteError(f"tensor '{fqn}' named by the analysis is not in the model: {exc}") from exc


def _slice_everywhere(model: nn.Module, fqn: str, axes: dict[int, np.ndarray], aliases) -> None:
    owner, _, attr = fqn.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    tensor = getattr(module, attr)
    sliced = tensor.detach()
    for axis, idx in sorted(axes.items()):
        sliced = sliced.index_select(axis, torch.as_tensor(idx, dtype=torch.long, device=tensor.device))
    sliced = sliced.clone()
    replacement = nn.Parameter(sliced, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else sliced
    for holder, name, is_param in aliases.get(id(tensor), [(module, attr, isinstance(tensor, nn.Parameter))]):
        if is_param:
            holder._parameters[name] = replacement
        else:
            holder._buffers[name] = replacement
