"""Size lists: a list attribute that a module passes whole as the piece sizes of a split (`torch.split(v,
self.channel_splits, dim=1)`), refreshed piece by piece.

The width-attribute search maps sizes one by one (rewrite/width_attrs.py), so `[16, 24, 24]` whose two 24s
keep 16 and 8 channels is ambiguous there. Here the split node itself says what each piece becomes: piece i
keeps the channels of the i-th output that the plan keeps. A list or tuple attribute of a module the split
runs in (or around it) equal to the literal sizes takes the new sizes, unless two splits there disagree.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
from torch import nn

from structprune.graph.channel_graph import ChannelGraph
from structprune.ir.abstract import Abstract
from structprune.ir.ops import op_base
from structprune.rewrite.keep import new_shape

ListMap = dict[tuple[int, ...], set[tuple[int, ...]]]  # old piece sizes -> the piece sizes they become


def size_list_changes(graph: ChannelGraph, keep: np.ndarray) -> dict[str, ListMap]:
    """Per module FQN, the literal piece sizes of every split_with_sizes run inside it -> their new sizes."""
    changes: dict[str, ListMap] = defaultdict(lambda: defaultdict(set))
    for node in graph.captured.graph.nodes:
        if op_base(node.target) != "split_with_sizes" or not isinstance(node.args[1], (list, tuple)):
            continue
        parts = graph.values.get(node.name)
        if not isinstance(parts, tuple) or not all(isinstance(p, Abstract) for p in parts):
            continue
        dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % parts[0].ndim
        old = tuple(int(s) for s in node.args[1])
        new = tuple(new_shape(p, keep, graph.component)[dim] for p in parts)
        for path in ["", *(path for path, _ in (node.meta.get("nn_module_stack") or {}).values())]:
            changes[path][old].add(new)
    return changes


def by_module(model: nn.Module, changes: dict[str, ListMap]) -> dict[int, ListMap]:
    """The same changes keyed by module identity (`id`): a module shared by several parents runs under
    each parent's path in the graph, and `named_modules` names it once."""
    merged: dict[int, ListMap] = defaultdict(lambda: defaultdict(set))
    for path, lists in changes.items():
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        for old, new in lists.items():
            merged[id(module)][old] |= new
    return merged


def mapped_size_list(value, changes: ListMap):
    """`value` (a list or tuple of ints) refreshed piece by piece; None where no split in scope passes it,
    or splits there disagree on what it becomes."""
    if not isinstance(value, (list, tuple)):
        return None
    targets = changes.get(tuple(value)) if all(isinstance(v, int) for v in value) else None
    if not targets or len(targets) != 1:
        return None
    return type(value)(next(iter(targets)))
