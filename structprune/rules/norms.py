"""Normalisations. Batch/instance norm are per channel (exact under masking); layer/group/RMS norm mix
the channels they normalise over, so those channels are flagged inexact (checked by shapes only)."""
from __future__ import annotations

import numpy as np
import torch
from torch import fx

from structprune.ir.abstract import Abstract, make_with_chan
from structprune.ir.roles import ROLE_ELEM
from structprune.rules.context import RuleContext
from structprune.rules.elementwise import broadcast_union


def _with_extras(ctx: RuleContext, node: fx.Node, out: Abstract):
    """Ops like native_layer_norm return (out, mean, rstd); extras are data values."""
    val = node.meta.get("val")
    if isinstance(val, (list, tuple)):
        extras = [ctx.fresh_data(tuple(v.shape)) if isinstance(v, torch.Tensor) else None for v in val[1:]]
        return (out, *extras)
    return out


def rule_batch_norm(ctx: RuleContext, node: fx.Node) -> None:
    """batch_norm / instance_norm(x, weight, bias, running_mean, running_var, ...)."""
    x = ctx.value(node.args[0])
    if x is None:
        ctx.set(node, None)
        return
    ch = 1 if x.ndim > 1 else 0
    for state in node.args[1:5]:
        ids = ctx.state_axis(state, 0, ROLE_ELEM) if state is not None else None
        if ids is not None:
            ctx.tie_dim(x, ch, ids, "batch_norm")
    ctx.set(node, _with_extras(ctx, node, x))


def rule_layer_norm(ctx: RuleContext, node: fx.Node) -> None:
    """layer_norm / rms_norm(x, normalized_shape, weight, bias): affine params are element-wise."""
    x = ctx.value(node.args[0])
    if x is None:
        ctx.set(node, None)
        return
    normalized = len(node.args[1])
    affine = [ctx.value(a) for a in node.args[2:4] if a is not None]
    out = broadcast_union(ctx, [x] + [a for a in affine if a is not None], x.shape)
    if any(x.chan[x.ndim - normalized:]):
        ctx.flag_inexact(x.ids, "layer_norm")
    ctx.set(node, _with_extras(ctx, node, out))


def rule_group_norm(ctx: RuleContext, node: fx.Node) -> None:
    """group_norm(x, num_groups, weight, bias): local channel index tied across groups."""
    x, groups = ctx.value(node.args[0]), node.args[1]
    if x is None:
        ctx.set(node, None)
        return
    if x.chan[1]:
        moved = np.moveaxis(x.ids, 1, -1)
        per_group = moved.reshape(moved.shape[:-1] + (groups, -1))
        ctx.union(per_group, per_group[..., :1, :])
        ctx.flag_inexact(x.ids, "group_norm")
    for state in node.args[2:4]:
        ids = ctx.state_axis(state, 0, ROLE_ELEM) if state is not None else None
        if ids is not None:
            ctx.tie_dim(x, 1, ids, "group_norm")
    ctx.set(node, _with_extras(ctx, node, make_with_chan(x.ids, x.chan, ctx.shape(node) or x.shape)))


def rule_native_group_norm(ctx: RuleContext, node: fx.Node) -> None:
    """native_group_norm(x, weight, bias, N, C, HxW, group, eps): reorder to group_norm's layout."""
    x, weight, bias, groups = node.args[0], node.args[1], node.args[2], node.args[6]
    proxy = _NodeView(node, (x, groups, weight, bias))
    rule_group_norm(ctx, proxy)
    ctx.set(node, ctx.values.pop(proxy.name))


class _NodeView:
    """A node seen with rearranged args, so one rule serves two argument layouts."""

    def __init__(self, node: fx.Node, args: tuple) -> None:
        self.args, self.meta, self.name = args, node.meta, node.name + "::view"
        self.kwargs = {}
