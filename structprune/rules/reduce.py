"""Reductions, softmax-like ops, pooling and resampling.

Reducing over a channel dim (mean over C in a hand-written LayerNorm, say) is allowed but flags those
channels inexact, unless each reduced fibre is one unit (pruned or kept whole). Pooling and resampling act
on spatial dims. Where those carry ids and another dim carries channels (a position-embedding parameter
(1, C, H, W) interpolated to the feature map's size: every element has an id until a consumer narrows
it), each fibre over the spatial dims becomes one unit, so the other dim stays prunable; where only the
spatial dims carry channels, the op would mix them: blocked.
"""
from __future__ import annotations

import operator
import re

import numpy as np
import torch
from torch import fx

from structprune.ir.abstract import make_with_chan, representative
from structprune.ir.reasons import ReasonKind
from structprune.rules.context import RuleContext


def _reduced_dims(node: fx.Node, ndim: int) -> list[int]:
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    if dims is None or dims == [] or dims == ():
        return list(range(ndim))
    if isinstance(dims, int):
        dims = [dims]
    if not isinstance(dims, (list, tuple)) or not all(isinstance(d, int) for d in dims):
        return list(range(ndim))  # e.g. linalg_vector_norm(x, ord, dim): dim is the 3rd arg
    return [d % ndim for d in dims]


def _input_and_output(ctx: RuleContext, node: fx.Node):
    """(input value, first output tensor, whether the op returns a tuple), or None after marking the
    node as having no tensor output."""
    x = ctx.value(node.args[0])
    val = node.meta.get("val")
    first = val[0] if isinstance(val, (list, tuple)) else val
    if x is None or not isinstance(first, torch.Tensor):
        ctx.set(node, None)
        return None
    return x, first, isinstance(val, (list, tuple))


def rule_reduction(ctx: RuleContext, node: fx.Node, op: str) -> None:
    found = _input_and_output(ctx, node)
    if found is None:
        return
    x, first, is_tuple = found
    dims = _dims_for(node, x.ndim, op)
    chan_reduced = [d for d in dims if x.chan[d]]
    keeps_channels = any(c for d, c in enumerate(x.chan) if d not in dims)
    if chan_reduced and _returns_positions(node, op, is_tuple):
        _keep_positions(ctx, node, x, chan_reduced, keeps_channels, op)
    elif chan_reduced:
        _flag_inexact_unless_whole_fibres(ctx, x, chan_reduced, op)
        if keeps_channels:  # the output's remaining channel ids must stand for whole fibres
            ctx.union_fibres(x, chan_reduced)
    out_shape = tuple(first.shape)
    keepdim = len(out_shape) == x.ndim
    ids = representative(x, set(dims))
    chan = tuple(False if d in dims else c for d, c in enumerate(x.chan))
    if not keepdim:
        ids = ids.reshape([s for d, s in enumerate(ids.shape) if d not in dims])
        chan = tuple(c for d, c in enumerate(chan) if d not in dims)
    out = make_with_chan(ids, chan, out_shape) if any(chan) else ctx.fresh_data(out_shape)
    ctx.set(node, (out, out) if is_tuple else out)


def _flag_inexact_unless_whole_fibres(ctx: RuleContext, x, dims: list[int], op: str) -> None:
    """A reduction over channel dims mixes each fibre along them (every reduced channel at one position of
    the others): exact where that fibre is kept or removed whole (a head's q normalised over its own dims,
    Swin V2's cosine attention), inexact where it spans several units (a hand-written LayerNorm's mean)."""
    moved = np.moveaxis(x.ids, dims, list(range(x.ndim - len(dims), x.ndim)))
    ctx.space.flag_inexact_unless_whole(moved.reshape(-1, int(np.prod(moved.shape[x.ndim - len(dims):]))), op)


def _dims_for(node: fx.Node, ndim: int, op: str) -> list[int]:
    if op in ("linalg_vector_norm", "norm"):
        dims = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
        return list(range(ndim)) if dims is None else [d % ndim for d in ([dims] if isinstance(dims, int) else dims)]
    return _reduced_dims(node, ndim)


def rule_softmax(ctx: RuleContext, node: fx.Node, op: str) -> None:
    """softmax / log_softmax / cumsum(x, dim): shape-preserving, mixes along `dim` (exact when every
    fibre along `dim` is one unit, e.g. a whole head's block in channel attention)."""
    x = ctx.value(node.args[0])
    if x is not None and x.chan[node.args[1] % x.ndim]:
        ctx.flag_inexact_unless_whole(x, node.args[1] % x.ndim, op)
    ctx.set(node, x)


def rule_spatial(ctx: RuleContext, node: fx.Node, op: str) -> None:
    """Pooling / interpolation over the trailing k spatial dims (k from the op name: 1d/2d/3d)."""
    found = _input_and_output(ctx, node)
    if found is None:
        return
    x, first, is_tuple = found
    val = node.meta.get("val")
    match = re.search(r"([123])d", op)
    k = int(match.group(1)) if match else x.ndim - 2
    spatial = list(range(x.ndim - k, x.ndim))
    mixed = [d for d in spatial if x.chan[d]]
    if mixed and any(c for d, c in enumerate(x.chan) if d not in spatial):
        out = ctx.fibres_as_units(x, spatial, tuple(first.shape))  # a parameter grid resampled over space
    elif mixed:
        ctx.block(x.ids, ReasonKind.UNSUPPORTED_OP, f"{op} over a channel dim")
        out = ctx.fresh_data(tuple(first.shape))
    else:
        out = make_with_chan(x.ids, x.chan, tuple(first.shape))
    ctx.set(node, (out, ctx.fresh_data(tuple(val[1].shape))) if is_tuple else out)


POSITION_OPS = ("argmax", "argmin")  # reductions whose output is a position along the reduced dims


def _returns_positions(node: fx.Node, op: str, is_tuple: bool) -> bool:
    """True if the reduction's result read downstream holds positions along the reduced dims: argmax /
    argmin, or max / min(x, dim) whose indices (second output) are used."""
    if op in POSITION_OPS:
        return True
    return is_tuple and any(user.target is operator.getitem and user.args[1] == 1 and user.users for user in node.users)


def _keep_positions(ctx: RuleContext, node: fx.Node, x, dims: list[int], keeps_channels: bool, op: str) -> None:
    """Positions along pruned channel dims would point elsewhere after the rewrite, unseen by verification's
    masked model: each fibre along the reduced dims is kept whole (the other channel dims stay prunable),
    and where no other dim carries channels the op blocks them, naming itself."""
    if keeps_channels:
        ctx.union_fibres(x, dims)
    else:
        ctx.block(x.ids, ReasonKind.DATA_DIMENSION, f"{op} over a channel dim returns channel positions")


REDUCTION_OPS = (
    "mean", "sum", "amax", "amin", "max", "min", "prod", "var", "std", "var_mean", "std_mean",
    "logsumexp", "linalg_vector_norm", "norm", "argmax", "argmin", "any", "all", "nansum", "nanmean",
)
SOFTMAX_OPS = ("softmax", "_softmax", "log_softmax", "_log_softmax", "cumsum", "cumprod", "logcumsumexp")
SPATIAL_OPS = (
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "max_pool3d_with_indices",
    "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "_adaptive_avg_pool2d", "_adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool3d", "lp_pool1d", "lp_pool2d",
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_linear1d",
    "upsample_bilinear2d", "upsample_bicubic2d", "upsample_trilinear3d", "_upsample_nearest_exact1d",
    "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa",
)
