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
    pruned = copy.deepcopy(model, memo=_sliced_memo(model, kept_indices(graph, keep)))
    before = [(m, snapshot(m)) for m in pruned.modules()]  # attributes only: still the unsliced ones
    for module, old in reversed(before):  # children before parents
        refresh_attributes(module, old, graph.attention)
    if isinstance(pruned, fx.GraphModule):
        fix_literal_shapes(pruned, graph, keep)
    return pruned


def _sliced_memo(model: nn.Module, indices: dict[str, dict[int, np.ndarray]]) -> dict[int, torch.Tensor]:
    """A deepcopy memo that maps each tensor to be sliced to its sliced copy: the copy then never
    duplicates those dense tensors, every holder of one (tied weights) gets the same new tensor, and
    the caller's model is only read. A tensor named twice is sliced by each name in turn."""
    memo: dict[int, torch.Tensor] = {}
    for fqn, axes in indices.items():
        tensor = _named_tensor(model, fqn)
        memo[id(tensor)] = _sliced(memo.get(id(tensor), tensor), axes)
    return memo


def _named_tensor(model: nn.Module, fqn: str) -> torch.Tensor:
    owner, _, attr = fqn.rpartition(".")
    try:
        return getattr(model.get_submodule(owner) if owner else model, attr)
    except AttributeError as exc:
        raise RewriteError(f"tensor '{fqn}' named by the analysis is not in the model: {exc}") from exc


def _sliced(tensor: torch.Tensor, axes: dict[int, np.ndarray]) -> torch.Tensor:
    """A new tensor (own storage) with only the kept indices on each axis; parameters stay parameters."""
    sliced = tensor.detach()
    for axis, idx in sorted(axes.items()):
        sliced = sliced.index_select(axis, torch.as_tensor(idx, dtype=torch.long, device=tensor.device))
    return nn.Parameter(sliced, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else sliced
