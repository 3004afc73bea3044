"""Ops that move channels into space and back, or pick entries by an index tensor.

pixel_shuffle(x, r): (…, C·r², H, W) -> (…, C, H·r, W·r). Output channel c is the block of input
channels c·r² … c·r² + r² - 1 spread over space: the block is one unit (it is pruned whole).
pixel_unshuffle(x, r): the inverse. Output channels c·r² + k all come from input channel c, so they carry
its id (a block index map).
index_select(x, dim, index): entries picked along a data dim keep x's channels; picking along a channel
dim uses indices fixed in the model (a buffer, a constant), so it blocks.
"""
from __future__ import annotations

import numpy as np
from torch import fx

from structprune.ir.abstract import Abstract, make_with_chan
from structprune.ir.reasons import Reason, ReasonKind
from structprune.rules.context import RuleContext


def _blocked(ctx: RuleContext, node: fx.Node, src: Abstract, kind: ReasonKind, detail: str) -> None:
    """Block `src`'s channels and give the output that reason (its fixed width blocks its readers too)."""
    rid = ctx.space.reason_id(Reason(kind, detail, node.name))
    ctx.union(src.ids, rid)
    ctx.set(node, Abstract(np.full((1,) * len(ctx.shape(node)), rid, dtype=np.int64),
                           (False,) * len(ctx.shape(node)), ctx.shape(node)))


def _spatial_input(ctx: RuleContext, node: fx.Node, op: str) -> Abstract | None:
    """The input, or None (after blocking) when its two spatial dims carry channels."""
    src = ctx.value(node.args[0])
    if src is None or ctx.shape(node) is None:
        ctx.set(node, None)
        return None
    if src.chan[-1] or src.chan[-2]:
        _blocked(ctx, node, src, ReasonKind.UNSUPPORTED_OP, f"{op} over spatial dims that carry channels")
        return None
    return src


def rule_pixel_shuffle(ctx: RuleContext, node: fx.Node) -> None:
    src = _spatial_input(ctx, node, "pixel_shuffle")
    if src is None:
        return
    c, blocks = src.ndim - 3, node.args[1] ** 2
    ids = src.ids
    if src.chan[c]:
        grouped = ids.reshape(ids.shape[:c] + (-1, blocks) + ids.shape[c + 1:])
        ctx.union(grouped, grouped.take([0], axis=c + 1))
        ids = grouped.take(0, axis=c + 1)
    ctx.set(node, make_with_chan(ids, src.chan, ctx.shape(node)))


def rule_pixel_unshuffle(ctx: RuleContext, node: fx.Node) -> None:
    src = _spatial_input(ctx, node, "pixel_unshuffle")
    if src is None:
        return
    c = src.ndim - 3
    ids = np.repeat(src.ids, node.args[1] ** 2, axis=c) if src.chan[c] else src.ids
    ctx.set(node, make_with_chan(ids, src.chan, ctx.shape(node)))


def rule_index_select(ctx: RuleContext, node: fx.Node) -> None:
    src, out_shape = ctx.value(node.args[0]), ctx.shape(node)
    if src is None or out_shape is None:
        ctx.set(node, None)
        return
    ctx.block_index_values(node.args[2], "index_select")
    dim = node.args[1] % src.ndim if src.ndim else 0
    if src.ndim and src.chan[dim]:
        _blocked(ctx, node, src, ReasonKind.FIXED_SIZE, "index_select along a channel dim picks fixed indices")
        return
    ctx.set(node, make_with_chan(src.ids, src.chan, out_shape))
