"""GraphModules (from .pt2 archives) bake shapes into their nodes: fix view/reshape/expand sizes,
slice bounds, select indices and split sizes on channel dims after pruning."""
from __future__ import annotations

import numpy as np
import torch
from torch import fx

from structprune.graph.channel_graph import ChannelGraph
from structprune.ir.ops import op_base
from structprune.rewrite.keep import new_shape

_SHAPE_ARG_OPS = {"view", "reshape", "_unsafe_view", "expand", "view_copy", "expand_copy"}


def fix_literal_shapes(gm: fx.GraphModule, graph: ChannelGraph, keep: np.ndarray) -> None:
    """Rewrite literal size arguments in place, then recompile the module."""
    values = graph.values
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.name not in values:
            continue
        op = op_base(node.target)
        if op in _SHAPE_ARG_OPS and values[node.name] is not None:
            shape = new_shape(values[node.name], keep, graph.component)
            node.args = (node.args[0], list(shape)) + tuple(node.args[2:])
        elif op in ("slice", "select", "split_with_sizes", "split") and isinstance(node.args[0], fx.Node):
            _fix_indexing(node, op, values.get(node.args[0].name), keep, graph.component)
        elif op in _GROUPS_ARG:
            _fix_depthwise_groups(node, _GROUPS_ARG[op], values.get(node.args[0].name), keep, graph.component)
        elif op in ("layer_norm", "rms_norm") and values.get(node.args[0].name) is not None:
            shape = new_shape(values[node.args[0].name], keep, graph.component)
            node.args = (node.args[0], list(shape[len(shape) - len(node.args[1]):])) + tuple(node.args[2:])
    gm.graph.lint()
    gm.recompile()


_GROUPS_ARG = {"conv1d": 6, "conv2d": 6, "conv3d": 6, "convolution": 8}


def _fix_depthwise_groups(node: fx.Node, index: int, value, keep, component) -> None:
    """A depthwise conv's `groups` equals its input channels, so it shrinks with them."""
    groups = node.args[index] if len(node.args) > index else 1
    if value is None or groups == 1 or node.args[1].meta["val"].shape[1] != 1:
        return
    channels = new_shape(value, keep, component)[value.ndim - (node.args[1].meta["val"].ndim - 1)]
    if groups == value.shape[value.ndim - (node.args[1].meta["val"].ndim - 1)]:
        node.args = tuple(channels if i == index else a for i, a in enumerate(node.args))


def _kept_along(value, dim: int, keep: np.ndarray, component: np.ndarray) -> np.ndarray | None:
    if value is None or not value.chan[dim]:
        return None
    mask = keep[component[value.ids]]
    return mask.any(axis=tuple(b for b in range(mask.ndim) if b != dim))


def _fix_indexing(node: fx.Node, op: str, value, keep, component) -> None:
    if value is None:
        return
    dim = (node.args[1] if op in ("slice", "select") else (node.args[2] if len(node.args) > 2 else 0)) % value.ndim
    kept = _kept_along(value, dim, keep, component)
    if kept is None or kept.all():
        return
    before = np.concatenate([[0], np.cumsum(kept)])
    size = value.shape[dim]
    if op == "slice":
        start, end, _ = slice(*(list(node.args[2:4]) + [None] * (2 - len(node.args[2:4])))).indices(size)
        node.args = (node.args[0], node.args[1], int(before[start]), int(before[end])) + tuple(node.args[4:])
    elif op == "select":
        node.args = (node.args[0], node.args[1], int(before[node.args[2] % size]))
    else:
        sizes = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]] * (size // node.args[1])
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        new_sizes = [int(before[b] - before[a]) for a, b in zip(bounds[:-1], bounds[1:])]
        node.target = torch.ops.aten.split_with_sizes.default
        node.args = (node.args[0], new_sizes) + tuple(node.args[2:])
