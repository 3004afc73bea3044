"""Element-wise ops: one rule for every op whose output element depends only on the same-index
elements of its (broadcast) inputs. Broadcasting is handled here once.

Coupling: along an output channel dim, every input that is *not* broadcast there must lose the same
channels. An input broadcast on every output channel dim (a per-pixel mask, a scalar) couples with
nothing; one broadcast on some of them (a per-head bias over (head, dim)) ties whole fibres.
"""
from __future__ import annotations

import numpy as np
from torch import fx

from structprune.ir.abstract import Abstract, make_with_chan
from structprune.ir.ops import op_base
from structprune.rules.context import RuleContext, tensor_inputs

EXPAND_OPS = ("expand", "expand_as", "broadcast_to", "expand_copy")  # rules/shape.py's rule_expand


def rule_elementwise(ctx: RuleContext, node: fx.Node) -> None:
    inputs = [v for v in (_broadcast_source(ctx, a) for a in tensor_inputs(node)) if v is not None]
    out_shape = ctx.shape(node)
    if out_shape is None:
        ctx.set(node, None)
        return
    ctx.set(node, broadcast_union(ctx, inputs, out_shape))


def _broadcast_source(ctx: RuleContext, arg: fx.Node):
    """An operand's value; for one made by expand, the value it expanded: an element-wise op broadcasts it
    the same way. (F.normalize divides by its norm expanded over the channels: taken as a full-size data
    value it would tie every channel into one unit.)"""
    if isinstance(arg, fx.Node) and arg.op == "call_function" and op_base(arg.target) in EXPAND_OPS and arg.args:
        source = ctx.value(arg.args[0])
        if source is not None:
            return source
    return ctx.value(arg)


def broadcast_union(ctx: RuleContext, inputs: list[Abstract], out_shape: tuple[int, ...]) -> Abstract:
    """Tie the inputs of a broadcasting element-wise op and return the output's abstract value."""
    if not inputs:
        return ctx.fresh_data(out_shape)
    aligned = [_align(v, len(out_shape)) for v in inputs]
    out_chan = _output_channels(aligned, out_shape)
    chan_dims = [d for d, c in enumerate(out_chan) if c]
    reference = _reference(ctx, aligned, out_shape, out_chan)
    for shape_in, ids_in, chan_in in aligned:
        ids_in = _collapse_on_data_dims(ctx, ids_in, chan_in, shape_in, out_shape, out_chan)
        broadcast = [d for d in chan_dims if shape_in[d] == 1 and out_shape[d] > 1]
        if chan_dims and len(broadcast) == len(chan_dims):
            continue  # shared across every channel: couples with nothing
        ref = reference
        if broadcast:
            ctx.union_fibres(_as_abstract(ref, out_chan, out_shape), broadcast)
            for d in broadcast:
                ref = ref.take([0], axis=d)
        ctx.union(ids_in, ref)
    return make_with_chan(reference, out_chan, out_shape)


def _collapse_on_data_dims(ctx, ids, chan, shape, out_shape, out_chan) -> np.ndarray:
    """An input's channel dim that meets a data dim of the output at full size (a mask buffer over
    token positions) cannot shrink: its entries are tied to each other there."""
    for d in range(len(out_shape)):
        if chan[d] and not out_chan[d] and shape[d] == out_shape[d] > 1 and ids.shape[d] > 1:
            ctx.union(ids, ids.take([0], axis=d))
            ids = ids.take([0], axis=d)
    return ids


def _align(v: Abstract, ndim: int) -> tuple[tuple[int, ...], np.ndarray, tuple[bool, ...]]:
    pad = ndim - v.ndim
    shape = (1,) * pad + v.shape
    ids = v.ids.reshape((1,) * pad + v.ids.shape)
    return shape, ids, (False,) * pad + v.chan


def _output_channels(aligned, out_shape) -> tuple[bool, ...]:
    flags = []
    for d, size in enumerate(out_shape):
        if size > 1:
            full = [chan[d] for shape, _, chan in aligned if shape[d] == size]
            flags.append(bool(full) and all(full))
        else:
            flags.append(any(chan[d] for _, _, chan in aligned))
    return tuple(flags)


def _reference(ctx, aligned, out_shape, out_chan) -> np.ndarray:
    """Output ids: from the first input that spans every output channel dim, reduced on data dims."""
    target = tuple(s if c else 1 for s, c in zip(out_shape, out_chan))
    for shape_in, ids_in, _chan_in in aligned:
        if all(shape_in[d] == out_shape[d] for d, c in enumerate(out_chan) if c):
            ids = ids_in
            for d in range(len(out_shape)):
                if not out_chan[d] and ids.shape[d] > 1:
                    ctx.union(ids, ids.take([0], axis=d))
                    ids = ids.take([0], axis=d)
            return np.broadcast_to(ids, target).copy()
    return ctx.space.fresh(int(np.prod(target))).reshape(target)


def _as_abstract(ids: np.ndarray, chan, shape) -> Abstract:
    return make_with_chan(ids, chan, shape)


ELEMENTWISE_OPS = (
    # arithmetic and comparison
    "add", "sub", "rsub", "mul", "div", "true_divide", "floor_divide", "remainder", "fmod", "pow",
    "maximum", "minimum", "fmax", "fmin", "eq", "ne", "lt", "le", "gt", "ge", "where", "masked_fill",
    "logical_and", "logical_or", "logical_xor", "logical_not", "bitwise_and", "bitwise_or", "bitwise_xor",
    "bitwise_not", "__and__", "__or__", "__xor__", "__invert__",
    "addcmul", "addcdiv", "lerp", "atan2", "hypot", "copysign", "clamp", "clip",
    "clamp_min", "clamp_max", "xlogy",
    # unary maths
    "neg", "abs", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "sqrt", "rsqrt",
    "reciprocal", "square", "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "erf",
    "erfc", "erfinv", "sign", "sgn", "floor", "ceil", "round", "trunc", "frac", "isnan", "isinf",
    "isfinite", "nan_to_num", "logit", "positive",
    # activations
    "relu", "relu_", "relu6", "gelu", "silu", "silu_", "sigmoid", "tanh", "hardswish", "hardswish_",
    "hardsigmoid", "hardtanh", "hardtanh_", "leaky_relu", "elu", "selu", "celu", "mish", "softplus",
    "softsign", "hardshrink", "softshrink", "tanhshrink", "threshold", "glu_jvp",
    # identity-like
    "clone", "contiguous", "detach", "alias", "lift_fresh_copy", "_to_copy", "to", "type_as",
    "dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout", "zeros_like",
    "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "_assert_tensor_metadata",
    # fills: write a constant over their input's shape (`bias[k:2k].zero_()`): the ids pass through and the
    # input's values tie nothing (a 0-d fill value is broadcast over every channel)
    "fill", "zero",
)
