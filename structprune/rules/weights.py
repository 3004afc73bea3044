"""Weights computed in the graph: `F.conv2d(x, self.v * self.scale)`, weight normalisation
(`aten._weight_norm(v, g, dim)`, both `torch.nn.utils.weight_norm` and its parametrization form),
`F.linear(x, self.w.t())`, `x @ self.weight.T` (Falcon's linear layers).

A *weight expression* is a node computed from parameters only, through ops whose axes we can follow
(element-wise with broadcasting, `_weight_norm`, weight standardisation by `batch_norm` over a view
`(1, out, in*k*k)` as timm's ScaledStdConv2d does, permutes, views), and read only as the
weight or bias of a convolution/linear layer (or by another weight expression). Its own rule is
deferred (`RuleContext.defer`): the layer asks `weight_axis_ids` for one axis at a time, and gets the
ids of every parameter axis that lands on it, tied together. So `v`'s input axis and `g`'s and `v`'s
output axes are sliced with the layer's channels, and the kernel axes are left alone.

Masking equivalence zeroes the parameters' input axes. It is exact for an input axis when every op on
the way keeps those zeros (products, copies, views, a 2-norm that zeros do not change); an output axis
is exact unless a norm mixes it (weight norm over another dim). Other paths flag the channels inexact.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from structprune.ir.roles import ROLE_OUT
from structprune.rules.context import RuleContext, tensor_inputs
from structprune.rules.elementwise import ELEMENTWISE_OPS
from structprune.rules.fallback import op_key


@dataclass(frozen=True)
class Axis:
    """A run of positions along one dim: index = q * (inner * size) + c * inner + r, for the channel
    c < size (a whole dim has inner 1). A view that merges dims carries a parameter axis as such a run."""

    dim: int
    inner: int
    size: int


@dataclass(frozen=True)
class Edge:
    """How one input of a weight-expression op reaches its output: output dim -> input dim, or, for a
    view, the input and output shapes (`view_axis` follows a run of positions across them)."""

    source: fx.Node
    dims: dict
    keeps_zeros: bool = True        # zeros on the mapped dims stay zeros in the output
    mixes: frozenset = frozenset()  # output dims a normalisation reduces over
    view: tuple | None = None       # (input shape, output shape) of a view

    def follow(self, axis: Axis) -> Axis | None:
        """Where `axis` of the output comes from in this input (None where it is not followed)."""
        if self.view is not None:
            return view_axis(*self.view, axis)
        return Axis(self.dims[axis.dim], axis.inner, axis.size) if axis.dim in self.dims else None


def _strides(shape) -> list[int]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= size
    return strides[::-1]


def view_axis(in_shape, out_shape, axis: Axis) -> Axis | None:
    """The run of the view's input that `axis` of its output reads: a view keeps flat positions, so
    the run's flat stride is looked up in the input's dims; None if the run straddles two of them.

    >>> view_axis((16, 3, 3, 3), (1, 16, 27), Axis(2, 9, 3))  # the input channels of a merged kernel
    Axis(dim=1, inner=1, size=3)
    """
    step = axis.inner * _strides(out_shape)[axis.dim]
    for dim, (size, stride) in enumerate(zip(in_shape, _strides(in_shape))):
        if stride <= step < stride * size and step % stride == 0:
            inner = step // stride
            return Axis(dim, inner, axis.size) if size % (inner * axis.size) == 0 else None
    return None


@dataclass(frozen=True)
class Source:
    """One parameter axis that lands on a weight axis, and what the path did to it."""

    param: fx.Node
    axis: int
    keeps_zeros: bool
    mixed: bool


def _shape(node) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(int(s) for s in val.shape) if isinstance(val, torch.Tensor) else None


def _broadcast_edges(node: fx.Node, keeps_zeros: bool) -> list[Edge]:
    out = _shape(node)
    edges = []
    for arg in tensor_inputs(node):
        shape = _shape(arg)
        pad = len(out) - len(shape)
        dims = {d: d - pad for d in range(pad, len(out)) if shape[d - pad] == out[d]}
        edges.append(Edge(arg, dims, keeps_zeros))
    return edges


def _elementwise(node: fx.Node) -> list[Edge]:
    return _broadcast_edges(node, op_key(node.target).removeprefix("aten.") in _ZERO_KEEPING)


def _divide(node: fx.Node) -> list[Edge]:
    numerator, *denominators = _broadcast_edges(node, True)
    return [numerator] + [Edge(e.source, e.dims, False) for e in denominators]


def _weight_norm(node: fx.Node) -> list[Edge]:
    """_weight_norm(v, g, dim) = v * g / |v| (the 2-norm over every dim but `dim`; all dims if -1)."""
    v, g = node.args[0], node.args[1]
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    ndim = len(_shape(node))
    mixed = frozenset(range(ndim)) if dim == -1 else frozenset(d for d in range(ndim) if d != dim % ndim)
    g_shape, out = _shape(g), _shape(node)
    g_dims = {d: d for d in range(ndim) if len(g_shape) == ndim and g_shape[d] == out[d] and out[d] > 1}
    return [Edge(v, {d: d for d in range(ndim)}, True, mixed), Edge(g, g_dims, True)]


def _permute(node: fx.Node) -> list[Edge]:
    ndim = len(_shape(node))
    if op_key(node.target) in ("aten.t", "aten.numpy_T"):
        perm = list(reversed(range(ndim)))
    elif op_key(node.target) in ("aten.transpose", "aten.swapaxes", "aten.swapdims"):
        perm = list(range(ndim))
        a, b = node.args[1] % ndim, node.args[2] % ndim
        perm[a], perm[b] = perm[b], perm[a]
    else:
        perm = [d % ndim for d in node.args[1]]
    return [Edge(node.args[0], {d: p for d, p in enumerate(perm)})]


def _reshape(node: fx.Node) -> list[Edge]:
    """A view: runs of positions are followed across merged and split dims (`view_axis`)."""
    return [Edge(node.args[0], {}, view=(_shape(node.args[0]), _shape(node)))]


def _batch_norm(node: fx.Node) -> list[Edge]:
    """batch_norm(x, weight, bias, ...) standardises each channel (dim 1) over every other dim: the
    channel dim stays per channel, the others are mixed (and their zeros do not stay zeros)."""
    ndim = len(_shape(node))
    mixed = frozenset(d for d in range(ndim) if d != 1)
    affine = [Edge(a, {1: 0}) for a in node.args[1:3] if isinstance(a, fx.Node)]
    return [Edge(node.args[0], {d: d for d in range(ndim)}, False, mixed), *affine]


_ZERO_KEEPING = frozenset({
    "mul", "neg", "clone", "contiguous", "detach", "alias", "lift_fresh_copy", "_to_copy", "to",
    "type_as", "positive", "relu", "abs", "square", "sin", "tanh", "sign", "sgn",
})
EDGES = {f"aten.{name}": _elementwise for name in ELEMENTWISE_OPS} | {
    "aten.div": _divide, "aten.true_divide": _divide,
    "aten._weight_norm": _weight_norm, "aten.batch_norm": _batch_norm,
    **{f"aten.{n}": _permute for n in ("permute", "t", "transpose", "swapaxes", "swapdims", "numpy_T")},
    **{f"aten.{n}": _reshape for n in ("view", "reshape", "_unsafe_view", "view_as", "reshape_as")},
}
WEIGHT_CONSUMERS = {  # op key -> argument positions read as weight or bias
    **{f"aten.{n}": (1, 2) for n in ("conv1d", "conv2d", "conv3d", "convolution", "_convolution",
                                     "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear")},
    "aten.matmul": (1,), "aten.mm": (1,), "aten.addmm": (2,),  # x @ w.T (rules.attention.rule_matmul)
}


def deferrable(rule):
    """`rule`, except that on a weight expression it is deferred until something else reads the node."""
    def run(ctx: RuleContext, node: fx.Node) -> None:
        if is_weight_expression(ctx, node):
            ctx.defer(node, rule)
        else:
            rule(ctx, node)
    run.__doc__, run.__name__, run.rule = rule.__doc__, getattr(rule, "__name__", "rule"), rule
    return run


def is_weight_expression(ctx: RuleContext, node: fx.Node) -> bool:
    """Computed from floating parameters only, by ops in EDGES, and read only as a layer weight/bias."""
    return _memo(ctx, "computed_from_parameters", node) and _memo(ctx, "read_as_weight", node)


def _memo(ctx: RuleContext, what: str, node: fx.Node) -> bool:
    key = (what, node.name)
    if key not in ctx.memo:
        ctx.memo[key] = _PREDICATES[what](ctx, node)
    return ctx.memo[key]


def _computed_from_parameters(ctx: RuleContext, node: fx.Node) -> bool:
    if node.op != "call_function" or op_key(node.target) not in EDGES or _shape(node) is None:
        return False
    inputs = tensor_inputs(node)
    return bool(inputs) and all(_is_parameter(ctx, a) or _memo(ctx, "computed_from_parameters", a) for a in inputs)


def _read_as_weight(ctx: RuleContext, node: fx.Node) -> bool:
    """Every user reads the node as a layer's weight or bias, or is a weight expression itself."""
    for user in node.users:
        slots = WEIGHT_CONSUMERS.get(op_key(user.target)) if user.op == "call_function" else None
        if slots is not None:
            if any(a is node and i not in slots for i, a in enumerate(user.args)) or node in user.kwargs.values():
                return False
        elif not is_weight_expression(ctx, user):
            return False
    return bool(node.users)


_PREDICATES = {"computed_from_parameters": _computed_from_parameters, "read_as_weight": _read_as_weight}


def _is_parameter(ctx: RuleContext, arg: fx.Node) -> bool:
    return ctx.fqn(arg) is not None and arg.meta["val"].is_floating_point()


def sources(ctx: RuleContext, node: fx.Node, dim: int) -> list[Source]:
    """Every parameter axis that lands on dim `dim` of a parameter or a (deferred) weight expression."""
    return _sources(ctx, node, Axis(dim, 1, _shape(node)[dim]))


def _sources(ctx: RuleContext, node: fx.Node, axis: Axis) -> list[Source]:
    if _is_parameter(ctx, node):
        whole = axis.inner == 1 and axis.size == _shape(node)[axis.dim]
        return [Source(node, axis.dim, True, False)] if whole else []
    if not ctx.is_deferred(node):
        return []
    found = []
    for edge in EDGES[op_key(node.target)](node):
        moved = edge.follow(axis)
        for s in _sources(ctx, edge.source, moved) if moved is not None else ():
            mixed = s.mixed or axis.dim in edge.mixes
            found.append(Source(s.param, s.axis, s.keeps_zeros and edge.keeps_zeros, mixed))
    return found


def resolvable(ctx: RuleContext, node, axes) -> bool:
    """Whether every axis in `axes` of this weight can be followed back to parameter axes."""
    if not isinstance(node, fx.Node) or _shape(node) is None:
        return False
    return all(sources(ctx, node, a % len(_shape(node))) for a in axes)


def weight_axis_ids(ctx: RuleContext, node, axis: int, role: str) -> np.ndarray | None:
    """Ids of one axis of a layer's weight (or bias): a parameter's own axis, or, for a weight
    expression, the tied axes of the parameters it is computed from. None if it is neither."""
    shape = _shape(node)
    if shape is None:
        return None
    found = sources(ctx, node, axis % len(shape))
    if not found:
        return None
    ids = [ctx.state_axis(s.param, s.axis, role) for s in found]
    for other in ids[1:]:
        ctx.union(ids[0], other)
    inexact = any(s.mixed for s in found) if role == ROLE_OUT else not all(s.keeps_zeros for s in found)
    if inexact:
        ctx.flag_inexact(ids[0], "computed weight")
    return ids[0]
