"""rewrite_model: apply a Plan to a deep copy of the model, keeping classes, FQNs and state_dict keys."""
from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial, reduce

import numpy as np
import torch
from torch import fx, nn

from structprune.errors import RewriteError
from structprune.graph.channel_graph import ChannelGraph
from structprune.rewrite.attention_attrs import HEAD_ATTRIBUTES
from structprune.rewrite.graph_module import fix_literal_shapes
from structprune.rewrite.keep import component_keep, kept_indices
from structprune.rewrite.on_read import ReplacedOnRead
from structprune.rewrite.shrink import DEFAULT_SHRINK_RULES, refresh_attributes, snapshot
from structprune.rewrite.weight_norm import computed_attribute_memo, recompute_weight_norms
from structprune.rewrite.width_attrs import kept_as_is, refresh_width_attributes, width_snapshot
from structprune.rewrite.width_search import apply_width_choices, chosen_widths
from structprune.selection.plan import Plan


def rewrite_model(model: nn.Module, graph: ChannelGraph, plan: Plan, *, share_unchanged: bool = False,
                  shrink_rules: Mapping = DEFAULT_SHRINK_RULES) -> nn.Module:
    """A smaller copy of `model` with the plan's dropped channels physically removed; `shrink_rules`
    refreshes the modules' attributes (see rewrite/shrink.py). `share_unchanged=True` is for a throwaway
    copy that is only run (verification): tensors that lose nothing are then the caller's own, not copies."""
    keep = component_keep(graph, plan)
    indices = kept_indices(graph, keep)
    memo = _sliced_memo(model, indices)
    return _rewritten_copy(model, graph, keep, indices, (_own_tensors(model) | memo) if share_unchanged else memo,
                           kept_as_is(plan), shrink_rules, chosen_widths(plan))


@contextmanager
def sliced_on_read(model: nn.Module, graph: ChannelGraph, plan: Plan, *,
                   shrink_rules: Mapping = DEFAULT_SHRINK_RULES) -> Iterator[nn.Module]:
    """A throwaway `rewrite_model(model, graph, plan)` that holds no sliced float tensor. Its modules
    are rewritten copies and its tensors are the caller's own, except that a float tensor the plan
    slices is a stand-in of the sliced shape holding one NaN: inside the block, each torch call that
    reads one gets the slice made for that call (`ReplacedOnRead`). A read that bypasses torch calls
    (TorchScript) sees NaN, so the caller can tell from non-finite outputs. For running the pruned
    model once without building it."""
    keep, memo = component_keep(graph, plan), _own_tensors(model)
    indices = kept_indices(graph, keep)
    replacements: dict[int, tuple[torch.Tensor, Callable[[], torch.Tensor]]] = {}
    for tensor, steps in _slicing_steps(model, indices).items():
        if not tensor.is_floating_point():  # cannot hold NaN; such tensors are small (index tables)
            memo[id(tensor)] = reduce(_sliced, steps, tensor)
            continue
        stand_in = _nan_stand_in(tensor, reduce(_sliced, steps, _meta_like(tensor)).shape)
        memo[id(tensor)] = stand_in
        replacements[id(stand_in)] = (stand_in, partial(reduce, _sliced, steps, tensor))
    pruned = _rewritten_copy(model, graph, keep, indices, memo, kept_as_is(plan), shrink_rules,
                             chosen_widths(plan))  # stand-in shapes
    with ReplacedOnRead(replacements):
        yield pruned


def _rewritten_copy(model: nn.Module, graph: ChannelGraph, keep: np.ndarray,
                    indices: Mapping[str, dict[int, np.ndarray]], memo: dict, as_is: frozenset[str] = frozenset(),
                    shrink_rules: Mapping = DEFAULT_SHRINK_RULES, choices: Mapping | None = None) -> nn.Module:
    """Deep-copy `model` through `memo` (tensor id -> its new tensor), then refresh the attributes
    (`indices`: `kept_indices(graph, keep)`; width attributes of the classes named in `as_is` stay as
    they were; `choices`, module -> attribute -> value, are set last: see rewrite/width_search.py)."""
    with warnings.catch_warnings():  # torch's own pytree deprecation, raised while copying a .pt2 module
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning)
        pruned = copy.deepcopy(model, memo=memo | computed_attribute_memo(model, memo))
    recompute_weight_norms(pruned)
    if isinstance(pruned, fx.GraphModule):
        _refresh_table_attributes(pruned, graph, shrink_rules, {})
        fix_literal_shapes(pruned, graph, keep)
        return pruned
    originals = width_snapshot(pruned, shrink_rules)  # attributes only: still the unsliced ones
    attention = _refresh_table_attributes(pruned, graph, shrink_rules, indices)
    refresh_width_attributes(pruned, originals, graph, keep, attention, as_is)
    apply_width_choices(pruned, choices or {})
    return pruned


def _refresh_table_attributes(pruned: nn.Module, graph: ChannelGraph, shrink_rules: Mapping,
                              kept: Mapping[str, dict[int, np.ndarray]]) -> dict[str, tuple[str, ...]]:
    """Refresh the shrink table's and the attention modules' attributes (`kept`: the kept positions of
    each sliced tensor, which tell an attention module's whole heads from dims of every head); returns,
    per attention module, the head attributes that refresh owns."""
    before = [(name, m, _with_query_rows(name, snapshot(m, shrink_rules), kept))
              for name, m in pruned.named_modules()]
    for _, module, old in reversed(before):  # children before parents
        refresh_attributes(module, old, graph.attention, shrink_rules)
    return {name: HEAD_ATTRIBUTES for name, _, old in before if "attention_shape" in old}


def _with_query_rows(name: str, old: dict, kept: Mapping[str, dict[int, np.ndarray]]) -> dict:
    """An attention module's snapshot plus the kept rows of its query projection (where it lost any)."""
    shape = old.get("attention_shape")
    if shape is None:
        return old
    rows = kept.get(f"{name}.{shape.projection}.weight" if name else f"{shape.projection}.weight", {}).get(0)
    return old if rows is None else {**old, "query_rows": rows}


def _own_tensors(model: nn.Module) -> dict[int, torch.Tensor]:
    """A deepcopy memo that keeps every parameter and buffer of `model` as it is (shared, not copied)."""
    return {id(t): t for t in (*model.parameters(), *model.buffers())}


def _slicing_steps(model: nn.Module, indices: dict[str, dict[int, np.ndarray]]) -> dict[torch.Tensor, list]:
    """Each tensor to be sliced -> the {axis: kept} slicings to apply in turn (one per name it has)."""
    steps: dict[int, tuple[torch.Tensor, list]] = {}
    for fqn, axes in indices.items():
        tensor = _named_tensor(model, fqn)
        steps.setdefault(id(tensor), (tensor, []))[1].append(axes)
    return dict(steps.values())


def _meta_like(tensor: torch.Tensor) -> torch.Tensor:
    """A shape-only copy (parameters stay parameters): slicing it gives the sliced shape for free."""
    meta = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
    return nn.Parameter(meta, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta


def _nan_stand_in(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """One NaN broadcast to `shape`, like `tensor` otherwise (device, dtype, parameter or not)."""
    nan = torch.full((), float("nan"), dtype=tensor.dtype, device=tensor.device).expand(shape)
    return nn.Parameter(nan, requires_grad=tensor.requires_grad) if isinstance(tensor, nn.Parameter) else nan


def _sliced_memo(model: nn.Module, indices: dict[str, dict[int, np.ndarray]]) -> dict[int, torch.Tensor]:
    """A deepcopy memo that maps each tensor to be sliced to its sliced copy: the copy then never
    duplicates those dense tensors, every holder of one (tied weights) gets the same new tensor, and
    the caller's model is only read. A tensor named twice is sliced by each name in turn."""
    return {id(tensor): reduce(_sliced, steps, tensor) for tensor, steps in _slicing_steps(model, indices).items()}


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
