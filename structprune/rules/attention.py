"""Matrix products and attention.

a (..., M, K) @ b (..., K, N):
 - contraction: a's K channels <-> b's K channels;
 - batch dims carrying channels (attention heads folded into the batch) tie a's and b's whole fibres,
   so a head's q, k and v dims fall into one unit: pruning removes whole heads;
 - output: batch dims from the tied fibres, M from a, N from b (a product of channels on M and on N
   cannot be represented by removing indices, so that case blocks).
scaled_dot_product_attention is softmax(q @ kᵀ) @ v and reuses exactly this.

Per-head-dim mode (`head_dims=True`, the "head_dims" attention mode) ties batch-dim channels across
the batch dims by local index instead: dim d of every head goes together, so every head loses the same
dims and keeps its head count. A contraction over such dims (q·k) changes a softmax scale that follows
head_dim, so those groups are flagged inexact. sdpa also ties v's dims to q's by local index when
they have the same size: attention modules keep one head_dim attribute for q, k and v.
"""
from __future__ import annotations

import numpy as np
from torch import fx

from structprune.ir.abstract import Abstract, make_with_chan
from structprune.ir.reasons import ReasonKind
from structprune.ir.roles import ROLE_IN, ROLE_OUT
from structprune.rules.context import RuleContext
from structprune.rules.elementwise import broadcast_union
from structprune.rules.fallback import rule_unsupported
from structprune.rules.layers import _tie_bias, contract_last
from structprune.rules.weights import resolvable, weight_axis_ids


def matmul_abstract(ctx: RuleContext, a: Abstract, b: Abstract, out_shape, op: str, *,
                    head_dims: bool = False) -> Abstract:
    """Tie and return the output of a @ b for activations a, b of rank >= 2."""
    if head_dims and (any(a.chan[:-2]) or any(b.chan[:-2])):
        return _matmul_head_dims(ctx, a, b, out_shape, op)
    ka, kb = a.ndim - 1, b.ndim - 2
    if any(a.chan[:-2]):  # channels on batch dims (heads): whole fibres go together
        ctx.union_fibres(a, [ka - 1, ka])
    elif a.chan[-2]:
        ctx.union_fibres(a, [ka])
    if any(b.chan[:-2]):
        ctx.union_fibres(b, [kb, kb + 1])
    elif b.chan[-1]:
        ctx.union_fibres(b, [kb])
    _tie_contraction(ctx, a, b, op)
    a_rep, b_rep = a.ids.take([0], axis=ka), b.ids.take([0], axis=kb)   # (..., M, 1), (..., 1, N)
    a_chan_m, b_chan_n = a.chan[-2], b.chan[-1]
    if a_chan_m and b_chan_n and any(a.chan[:-2]) and any(b.chan[:-2]):
        return _per_head_product(ctx, a, b, a_rep, b_rep, out_shape)
    if a_chan_m and b_chan_n:
        ctx.block(np.concatenate([a.ids.ravel(), b.ids.ravel()]), ReasonKind.DATA_DIMENSION,
                  f"{op} output would be a product of channels")
        return ctx.fresh_data(out_shape)
    batch = _tie_batch(ctx, a, b, a_rep, b_rep, out_shape)
    ndim = len(out_shape)
    if a_chan_m or b_chan_n:
        ids = _fit_batch(a_rep if a_chan_m else b_rep, ndim)
    elif batch is not None:
        ids = batch.ids
    else:
        return ctx.fresh_data(out_shape)
    if batch is not None and any(batch.ids.shape[d] > ids.shape[d] for d in range(ndim - 2)):
        ctx.block(batch.ids, ReasonKind.DATA_DIMENSION, f"{op} output would be a product of channels")
    chan = tuple(ids.shape[d] > 1 for d in range(ndim - 2)) + (a_chan_m, b_chan_n)
    return make_with_chan(ids, chan, out_shape)


def _per_head_product(ctx: RuleContext, a: Abstract, b: Abstract, a_rep, b_rep, out_shape) -> Abstract:
    """A product of channels on M and N inside heads (channel attention, XCA: qᵀk is head_dim × head_dim
    per head). Each head's fibres of a and b are already one unit, so the head's whole M × N block goes
    with it: the output carries the head's id on the batch, M and N axes."""
    _tie_batch(ctx, a, b, a_rep, b_rep, out_shape)
    ndim = len(out_shape)
    heads = _fit_batch(a_rep, ndim)  # (..., M, 1): each head's id, one per row
    ids = np.repeat(heads, out_shape[-1], axis=-1)
    chan = tuple(ids.shape[d] > 1 for d in range(ndim - 2)) + (True, True)
    return make_with_chan(ids, chan, out_shape)


def _matmul_head_dims(ctx: RuleContext, a: Abstract, b: Abstract, out_shape, op: str) -> Abstract:
    """Batch-dim channels (heads) tied across the batch dims by local index; the head axes of the
    output carry those ids (or nothing, for q·k scores, whose channels were contracted away)."""
    for v in (a, b):
        ctx.union_fibres(v, [d for d in range(v.ndim - 2) if v.chan[d]])
    if a.chan[-1] and b.chan[-2]:
        ctx.flag_inexact(np.concatenate([a.ids.ravel(), b.ids.ravel()]), f"{op} (softmax scale follows head_dim)")
    _tie_contraction(ctx, a, b, op)
    if a.chan[-2] and b.chan[-1]:
        ctx.block(np.concatenate([a.ids.ravel(), b.ids.ravel()]), ReasonKind.DATA_DIMENSION,
                  f"{op} output would be a product of channels")
        return ctx.fresh_data(out_shape)
    ndim = len(out_shape)
    if a.chan[-2]:
        ids, chan_m, chan_n = _fit_batch(a.ids.take([0], axis=a.ndim - 1), ndim), True, False
    elif b.chan[-1]:
        ids, chan_m, chan_n = _fit_batch(b.ids.take([0], axis=b.ndim - 2), ndim), False, True
    else:
        return ctx.fresh_data(out_shape)
    chan = tuple(ids.shape[d] > 1 for d in range(ndim - 2)) + (chan_m, chan_n)
    return make_with_chan(ids, chan, out_shape)


def _tie_contraction(ctx: RuleContext, a: Abstract, b: Abstract, op: str) -> None:
    a_k, b_k = a.chan[-1], b.chan[-2]
    if a_k and b_k:
        ctx.union(_fit_batch(a.ids, max(a.ndim, b.ndim))[..., :, :, None],
                  _fit_batch(b.ids, max(a.ndim, b.ndim))[..., None, :, :])
    elif a_k or b_k:
        side, other = (a, b) if a_k else (b, a)
        if other.is_data:
            ctx.union(side.ids, other.ids.ravel()[:1])
        else:
            ctx.block(side.ids, ReasonKind.DATA_DIMENSION, f"{op} contracts channels with a data dim")


def _tie_batch(ctx, a: Abstract, b: Abstract, a_rep, b_rep, out_shape):
    nb = len(out_shape) - 2
    if nb <= 0:
        return None
    a_b = Abstract(_fit_batch(a_rep.take([0], axis=-2), nb + 2), _batch_chan(a, nb), _batch_shape(a, nb))
    b_b = Abstract(_fit_batch(b_rep.take([0], axis=-1), nb + 2), _batch_chan(b, nb), _batch_shape(b, nb))
    if not (any(a_b.chan) or any(b_b.chan)):
        return None
    return broadcast_union(ctx, [a_b, b_b], tuple(out_shape[:-2]) + (1, 1))


def _batch_chan(v: Abstract, nb: int) -> tuple[bool, ...]:
    pad = nb - (v.ndim - 2)
    return (False,) * pad + tuple(v.chan[:-2]) + (False, False)


def _batch_shape(v: Abstract, nb: int) -> tuple[int, ...]:
    pad = nb - (v.ndim - 2)
    return (1,) * pad + tuple(v.shape[:-2]) + (1, 1)


def _fit_batch(ids: np.ndarray, ndim: int) -> np.ndarray:
    return ids.reshape((1,) * (ndim - ids.ndim) + ids.shape)


def rule_matmul(ctx: RuleContext, node: fx.Node, op: str, head_dims: bool = False) -> None:
    """mm / bmm / matmul / addmm / baddbmm; a parameter operand is treated like a linear weight."""
    offset = 1 if op in ("addmm", "baddbmm", "addbmm") else 0
    a_node, b_node = node.args[offset], node.args[offset + 1]
    a, out_shape = ctx.value(a_node), ctx.shape(node)
    b_shape = ctx.shape(b_node)
    if b_shape is not None and len(b_shape) == 2 and a is not None and a.ndim >= 1 and resolvable(ctx, b_node, (0, 1)):
        # a parameter operand, or one computed from parameters (Falcon's `x @ self.weight.T`), acts like a
        # linear weight (read per axis, never as a joint tensor)
        ctx.tie_dim(a, -1, weight_axis_ids(ctx, b_node, 0, ROLE_IN), op)
        out_ids = weight_axis_ids(ctx, b_node, 1, ROLE_OUT)
        if offset:
            _tie_bias(ctx, node.args[0], out_ids)
        ctx.set(node, contract_last(ctx, a, out_ids, out_shape, op))
        return
    b = ctx.value(b_node)
    if a is None or b is None or out_shape is None or a.ndim < 2 or b.ndim < 2:
        return rule_unsupported(ctx, node, "matrix product of vectors")
    out = matmul_abstract(ctx, a, b, out_shape, op, head_dims=head_dims)
    if offset:
        bias = ctx.value(node.args[0])
        out = broadcast_union(ctx, [out] + ([bias] if bias is not None else []), out_shape)
    ctx.set(node, out)


def rule_sdpa(ctx: RuleContext, node: fx.Node, head_dims: bool = False) -> None:
    """scaled_dot_product_attention(q, k, v, attn_mask, ...) = softmax(q kᵀ + mask) v."""
    q, k, v = (ctx.value(a) for a in node.args[:3])
    out_shape = ctx.shape(node)
    if q is None or k is None or v is None or out_shape is None:
        return rule_unsupported(ctx, node, "attention inputs without shapes")
    if q.ndim >= 3 and k.ndim >= 3 and q.shape[-3] != k.shape[-3]:
        return rule_unsupported(ctx, node, "grouped-query attention")
    kt = _transposed(k)
    scores_shape = tuple(q.shape[:-1]) + (k.shape[-2],)
    op = "scaled_dot_product_attention"
    scores = matmul_abstract(ctx, q, kt, scores_shape, op, head_dims=head_dims)
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    mask_value = ctx.value(mask) if mask is not None else None
    if mask_value is not None:
        scores = broadcast_union(ctx, [scores, mask_value], scores_shape)
    if not head_dims and q.chan[-1] and not any(q.chan[:-2]) and _default_scale(node):
        # one head (no heads dim carries channels): its dims are pruned one by one and sdpa's default
        # scale 1/sqrt(head_dim) follows them, which masking cannot show (as in "head_dims" mode)
        ctx.flag_inexact(np.concatenate([q.ids.ravel(), k.ids.ravel()]), f"{op} (softmax scale follows head_dim)")
    if head_dims and q.shape[-1] == v.shape[-1] and q.chan[-1] and v.chan[-1]:
        ctx.union(q.ids.take([0], axis=-2), v.ids.take([0], axis=-2))  # one head_dim for q, k and v
    ctx.set(node, matmul_abstract(ctx, scores, v, out_shape, op, head_dims=head_dims))


def _default_scale(node: fx.Node) -> bool:
    """Whether sdpa scales by 1/sqrt(head_dim) (no `scale` given)."""
    scale = node.args[6] if len(node.args) > 6 else node.kwargs.get("scale")
    return scale is None


def _transposed(v: Abstract) -> Abstract:
    perm = list(range(v.ndim))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return make_with_chan(np.transpose(v.ids, perm), tuple(v.chan[p] for p in perm),
                          tuple(v.shape[p] for p in perm))
