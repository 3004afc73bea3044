"""Parameter-owning channel mixers: convolutions, linear layers, embeddings, PReLU.

Conv weight (O, I/g, *k): O is the output channel axis ('out'), I/g the input one ('in').
 - g == 1: input channel c <-> weight in-axis c.
 - depthwise (I/g == 1): output o reads input o // m (m = O/g): the m outputs and their input are one unit.
 - grouped: input c = gi*(I/g)+j <-> weight in-axis j; output local index k is tied across groups, so
   every group keeps the same count and the group structure survives.
"""
from __future__ import annotations

import numpy as np
from torch import fx

from structprune.ir.abstract import Abstract, channel_vector, make_with_chan, representative
from structprune.ir.reasons import ReasonKind
from structprune.ir.roles import ROLE_ELEM, ROLE_IN, ROLE_OUT
from structprune.rules.context import RuleContext
from structprune.rules.fallback import rule_unsupported
from structprune.rules.weights import resolvable, weight_axis_ids

_CONV_ARGS = {  # op -> (index of groups, index of transposed or None)
    "conv1d": (6, None), "conv2d": (6, None), "conv3d": (6, None),
    "convolution": (8, 6), "_convolution": (8, 6),
    "conv_transpose1d": (6, True), "conv_transpose2d": (6, True), "conv_transpose3d": (6, True),
}


def _arg(node, i, default=None):
    return node.args[i] if len(node.args) > i else default


def rule_conv(ctx: RuleContext, node: fx.Node, op: str) -> None:
    groups_at, transposed_at = _CONV_ARGS[op]
    x, weight, bias = ctx.value(node.args[0]), node.args[1], _arg(node, 2)
    groups = _arg(node, groups_at, 1) or 1
    transposed = transposed_at is True or (transposed_at is not None and bool(_arg(node, transposed_at)))
    w_shape, out_shape = ctx.shape(weight), ctx.shape(node)
    if x is None or w_shape is None or not resolvable(ctx, weight, (0, 1)):
        return rule_unsupported(ctx, node, "convolution whose weight is not a parameter")
    ch = x.ndim - (len(w_shape) - 1)  # channel dim of the input (1 when batched)
    if transposed:
        if groups != 1:
            return rule_unsupported(ctx, node, "grouped transposed convolution")
        ctx.tie_dim(x, ch, weight_axis_ids(ctx, weight, 0, ROLE_IN), op)
        out_ids = weight_axis_ids(ctx, weight, 1, ROLE_OUT)
    else:
        out_ids = weight_axis_ids(ctx, weight, 0, ROLE_OUT)
        _tie_conv_input(ctx, x, ch, weight, w_shape, groups, out_ids, op)
    _tie_bias(ctx, bias, out_ids)
    along = _channels_along_space(ctx, x, ch, w_shape, out_shape, out_ids, op)
    ctx.set(node, along if along is not None else _channel_output(out_ids, out_shape, ch))


def _channels_along_space(ctx: RuleContext, x: Abstract, ch: int, w_shape, out_shape, out_ids: np.ndarray,
                          op: str) -> Abstract | None:
    """A conv whose input carries channels on a spatial dim (CoaT's `Conv1d` over the [B, tokens, C]
    class tokens, ECA's `Conv1d` over [B, 1, C]): a kernel of 1 that keeps the size reads each position
    alone, so those channels pass through to the output; a wider kernel slides over them (neighbours mix),
    so they are blocked, and still passed on where the size stays so what reads them is blocked too.
    The conv's own output channels then form a product with them: blocked unless there is one. None when
    the input has no channel on a spatial dim (the common case)."""
    spatial = [d for d in range(ch + 1, x.ndim) if x.chan[d]]
    if not spatial or x.chan[ch]:
        return None
    kept = [d for d in spatial if out_shape[d] == x.shape[d]]
    for d in spatial:
        if w_shape[2 + d - ch - 1] != 1 or d not in kept:
            ctx.block(x.ids, ReasonKind.DATA_DIMENSION, f"{op} slides its kernel over channel dim {d}")
    if out_ids.size > 1 and kept:
        ctx.block(out_ids, ReasonKind.DATA_DIMENSION, f"{op} output channels form a product with input channels")
    ids = x.ids
    for d in range(x.ndim):
        if d not in kept and ids.shape[d] > 1:
            ids = ids.take([0], axis=d)
    return make_with_chan(ids, tuple(d in kept for d in range(len(out_shape))), out_shape) if kept else None


def _tie_conv_input(ctx, x, ch, weight, w_shape, groups, out_ids, op) -> None:
    if groups == 1:
        ctx.tie_dim(x, ch, weight_axis_ids(ctx, weight, 1, ROLE_IN), op)
    elif w_shape[1] == 1:  # depthwise, channel multiplier m
        per_input = out_ids.reshape(groups, -1)
        ctx.union(per_input, per_input[:, :1])
        ctx.tie_dim(x, ch, per_input[:, 0], op)
    else:
        ctx.tie_dim(x, ch, np.tile(weight_axis_ids(ctx, weight, 1, ROLE_IN), groups), op)
        per_group = out_ids.reshape(groups, -1)
        ctx.union(per_group, per_group[:1, :])


def _tie_bias(ctx: RuleContext, bias, out_ids: np.ndarray) -> None:
    """A bias (a parameter, a weight expression, or any other value) follows the output channels."""
    if bias is None:
        return
    bias_ids = weight_axis_ids(ctx, bias, 0, ROLE_OUT) if resolvable(ctx, bias, (0,)) else None
    if bias_ids is not None:
        ctx.union(bias_ids, out_ids)
        return
    value = ctx.value(bias)
    if value is not None and value.ndim >= 1:
        ctx.tie_dim(value, -1, out_ids, "bias")


def _channel_output(out_ids: np.ndarray, out_shape, dim: int) -> Abstract:
    ndim = len(out_shape)
    chan = tuple(d == dim for d in range(ndim))
    return make_with_chan(channel_vector(out_ids, ndim, dim), chan, out_shape)


def rule_linear(ctx: RuleContext, node: fx.Node) -> None:
    """linear(x, W, b): x's last dim <-> W in-axis; output's last dim = W out-axis."""
    x, weight, bias = ctx.value(node.args[0]), node.args[1], _arg(node, 2)
    if x is None or not resolvable(ctx, weight, (0, 1)):
        return rule_unsupported(ctx, node, "linear whose weight is not a parameter")
    ctx.tie_dim(x, -1, weight_axis_ids(ctx, weight, 1, ROLE_IN), "linear")
    out_ids = weight_axis_ids(ctx, weight, 0, ROLE_OUT)
    _tie_bias(ctx, bias, out_ids)
    ctx.set(node, contract_last(ctx, x, out_ids, ctx.shape(node), "linear"))


def contract_last(ctx: RuleContext, x: Abstract, out_ids: np.ndarray, out_shape, op: str) -> Abstract:
    """Output of a layer that replaces x's last dim by new features `out_ids`."""
    last = x.ndim - 1
    others = [d for d in range(x.ndim) if x.chan[d] and d != last]
    if not others:
        return _channel_output(out_ids, out_shape, len(out_shape) - 1)
    # x keeps channels on other dims: the new features would form a product with them.
    ctx.union_fibres(x, [last])
    ctx.block(out_ids, ReasonKind.DATA_DIMENSION, f"{op} output features form a product with input channels")
    ids = representative(x, {last})
    return make_with_chan(ids, x.chan[:-1] + (False,), out_shape)


def rule_embedding(ctx: RuleContext, node: fx.Node) -> None:
    """embedding(W, indices): the output's last dim is W's embedding axis; indices are data (indices
    computed from channel values block those channels)."""
    weight = node.args[0]
    ctx.block_index_values(node.args[1], "embedding")
    out_ids = ctx.state_axis(weight, 1, ROLE_OUT)
    if out_ids is None:
        return rule_unsupported(ctx, node, "embedding whose table is not a parameter")
    out_shape = ctx.shape(node)
    ctx.set(node, _channel_output(out_ids, out_shape, len(out_shape) - 1))


def rule_prelu(ctx: RuleContext, node: fx.Node) -> None:
    x, weight = ctx.value(node.args[0]), node.args[1]
    w_shape = ctx.shape(weight)
    if x is not None and w_shape is not None and w_shape[0] > 1:
        ctx.tie_dim(x, 1 if x.ndim > 1 else 0, ctx.state_axis(weight, 0, ROLE_ELEM), "prelu")
    ctx.set(node, x)
