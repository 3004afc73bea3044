"""Advanced indexing, `x[idx]` (`aten.index`): index tensors pick entries along some dims of x.

A relative position bias table `table[index]` (Swin, MaxViT, BEiT) picks rows of a (positions, heads)
table, so the heads axis passes through whole. The rule: the other dims keep their channels; the
indexed dims are replaced by the index's (data) dims, in place when they are adjacent and in front
otherwise, as torch lays them out. Indexing along a channel dim picks fixed entries, so that axis is
kept whole: its entries are tied to each other (a lookup table's position axis; the key and value
slots of Falcon's fused grouped projection, `qkv.view(..., groups, heads + 2, head_dim)[..., [-2]]`),
while the other axes stay prunable (Falcon's whole KV groups). Where every channel dim of an
activation is indexed, nothing would stay prunable: that blocks, naming the op. An index tensor
that carries channels (its values computed from an activation) blocks those channels: the positions
it holds would change meaning with the pruning, unseen by verification's masked model.
"""
from __future__ import annotations

import numpy as np
from torch import fx

from structprune.ir.abstract import data_value, make_with_chan
from structprune.ir.reasons import ReasonKind
from structprune.rules.context import RuleContext


def rule_index(ctx: RuleContext, node: fx.Node) -> None:
    src, out_shape = ctx.value(node.args[0]), ctx.shape(node)
    if src is None or out_shape is None:
        ctx.set(node, None)
        return
    for index in node.args[1]:
        ctx.block_index_values(index, "advanced indexing")
    indexed = [d for d, index in enumerate(node.args[1]) if index is not None]
    channels = [d for d in range(src.ndim) if src.chan[d]]
    if ctx.fqn(node.args[0]) is None and channels and set(channels) <= set(indexed):
        rid = ctx.space.reason_id(ctx.reason(ReasonKind.FIXED_SIZE, "advanced indexing along a channel dim"))
        ctx.union(src.ids, rid)
        ctx.set(node, data_value(out_shape, rid))
        return
    for d in (d for d in indexed if src.chan[d]):
        ctx.union(src.ids, src.ids.take([0], axis=d))  # fixed entries along d: the whole axis is kept
    kept = [d for d in range(src.ndim) if d not in indexed]
    index_ndim = len(out_shape) - len(kept)
    first = indexed[0] if indexed == list(range(indexed[0], indexed[-1] + 1)) else 0
    ids = np.squeeze(src.ids[tuple(slice(0, 1) if d in indexed else slice(None) for d in range(src.ndim))],
                     axis=tuple(indexed))
    chan = [src.chan[d] for d in kept]
    ids = np.expand_dims(ids, axis=tuple(range(first, first + index_ndim)))
    chan[first:first] = [False] * index_ndim
    ctx.set(node, make_with_chan(ids, tuple(chan), out_shape))

