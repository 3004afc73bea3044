"""Data-movement ops: views, permutes, cat/split/slice/select on any dim. Each moves ids exactly as the
op moves elements, so offsets (cat, split), blocks (flatten, heads) and permutations (channel shuffle)
all fall out of running the op on the id array."""
from __future__ import annotations

import numpy as np
from torch import fx

from structprune.ir.abstract import Abstract, expand_to, make, make_with_chan
from structprune.ir.ops import op_base
from structprune.ir.reasons import ReasonKind
from structprune.rules.context import RuleContext
from structprune.rules.elementwise import broadcast_union
from structprune.rules.fallback import rule_unsupported
from structprune.rules.split_sizes import SizedSplit

MAX_RESHAPE_IDS = 20_000_000


def _arg(node: fx.Node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


_SIZED_VIEWS = ("view", "reshape", "_unsafe_view", "unflatten", "view_copy", "_reshape_alias")


def rule_reshape(ctx: RuleContext, node: fx.Node) -> None:
    """view / reshape / flatten / unflatten / squeeze / unsqueeze: shapes from the graph's metadata.
    A view given sizes that cover a channel dim relies on those sizes following the width (read from
    the input's shape, or from an attribute the rewrite refreshes; not a literal such as
    `x.view(-1, 16 * 5 * 5)`): recorded as an assumption verification falls back on."""
    src, out_shape = ctx.value(node.args[0]), ctx.shape(node)
    out = None if src is None or out_shape is None else reshape_abstract(ctx, src, out_shape)
    op = op_base(node.target)
    if out is not None and any(out.chan) and op in _SIZED_VIEWS:
        ctx.assume(out.ids, f"{op} to sizes that follow the pruned width")
    ctx.set(node, out)


def reshape_abstract(ctx: RuleContext, src: Abstract, out_shape: tuple[int, ...]) -> Abstract:
    """The value `src` reshaped to `out_shape` (ids move exactly as elements do)."""
    segments = reshape_segments(src.shape, out_shape)
    chan_in = {d for seg_in, _ in segments if any(src.chan[i] for i in seg_in) for d in seg_in}
    chan_out = {d for seg_in, seg_out in segments if set(seg_in) & chan_in for d in seg_out}
    size = int(np.prod([src.shape[d] for d in chan_in])) if chan_in else 1
    if size > MAX_RESHAPE_IDS:
        ctx.block(src.ids, ReasonKind.TOO_LARGE, f"{size} ids")
        return ctx.fresh_data(out_shape)
    ids = expand_to(src, chan_in)
    target = tuple(s if d in chan_out else 1 for d, s in enumerate(out_shape))
    out = make(ids.reshape(target), out_shape)
    if sum(out.chan) >= 2:
        ctx.grids.append(out.ids)  # a channel dim split into a grid: must be pruned as a sub-grid
    return out


def reshape_segments(shape_in, shape_out) -> list[tuple[list[int], list[int]]]:
    """Pair runs of input dims with runs of output dims that cover the same elements."""
    segments, i, j = [], 0, 0
    while i < len(shape_in) or j < len(shape_out):
        seg_in, seg_out, p_in, p_out = [], [], 1, 1
        if i < len(shape_in):
            seg_in.append(i)
            p_in *= shape_in[i]
            i += 1
        if j < len(shape_out):
            seg_out.append(j)
            p_out *= shape_out[j]
            j += 1
        while p_in != p_out:
            if p_in < p_out and i < len(shape_in):
                seg_in.append(i)
                p_in *= shape_in[i]
                i += 1
            elif j < len(shape_out):
                seg_out.append(j)
                p_out *= shape_out[j]
                j += 1
            else:
                break
        segments.append((seg_in, seg_out))
    return segments


def rule_permute(ctx: RuleContext, node: fx.Node) -> None:
    src = ctx.value(node.args[0])
    if src is None:
        ctx.set(node, None)
        return
    perm = [d % src.ndim for d in node.args[1]]
    _set_permuted(ctx, node, src, perm)


def rule_transpose(ctx: RuleContext, node: fx.Node) -> None:
    src = ctx.value(node.args[0])
    if src is None:
        ctx.set(node, None)
        return
    perm = list(range(src.ndim))
    if len(node.args) >= 3:
        a, b = node.args[1] % src.ndim, node.args[2] % src.ndim
    else:  # aten.t
        a, b = 0, src.ndim - 1
    perm[a], perm[b] = perm[b], perm[a]
    _set_permuted(ctx, node, src, perm)


def rule_reverse_dims(ctx: RuleContext, node: fx.Node) -> None:
    """`x.T` (aten.numpy_T): every dim reversed, as Falcon's linear layers read their weight."""
    src = ctx.value(node.args[0])
    if src is None:
        ctx.set(node, None)
        return
    _set_permuted(ctx, node, src, list(reversed(range(src.ndim))))


def _set_permuted(ctx, node, src: Abstract, perm) -> None:
    ctx.set(node, permuted(src, perm))


def permuted(src: Abstract, perm) -> Abstract:
    """`src` with its dims in the order `perm` (output dim i is input dim perm[i])."""
    ids = np.transpose(src.ids, perm)
    return make_with_chan(ids, tuple(src.chan[p] for p in perm), tuple(src.shape[p] for p in perm))


def rule_expand(ctx: RuleContext, node: fx.Node) -> None:
    """expand / broadcast_to: new and stretched dims are data dims (copies of one channel)."""
    src, out_shape = ctx.value(node.args[0]), ctx.shape(node)
    if src is None or out_shape is None:
        ctx.set(node, None)
        return
    pad = len(out_shape) - src.ndim
    ids = src.ids.reshape((1,) * pad + src.ids.shape)
    chan = (False,) * pad + tuple(c and src.shape[d] == out_shape[pad + d] for d, c in enumerate(src.chan))
    ctx.set(node, make_with_chan(ids, chan, out_shape))


def rule_repeat(ctx: RuleContext, node: fx.Node) -> None:
    """repeat(x, reps): a channel dim repeated r times holds its ids r times over (tiled)."""
    _set_tiled(ctx, node, list(node.args[1]))


def rule_tile(ctx: RuleContext, node: fx.Node) -> None:
    """tile(x, dims) is repeat with `dims` padded by leading ones to x's rank (hieradet's window embedding)."""
    src = ctx.value(node.args[0])
    reps = list(node.args[1])
    _set_tiled(ctx, node, [1] * ((src.ndim if src is not None else 0) - len(reps)) + reps)


def _set_tiled(ctx: RuleContext, node: fx.Node, reps: list) -> None:
    src, out_shape = ctx.value(node.args[0]), ctx.shape(node)
    if src is None or out_shape is None:
        ctx.set(node, None)
        return
    pad = len(reps) - src.ndim
    ids = src.ids.reshape((1,) * pad + src.ids.shape)
    chan = (False,) * pad + src.chan
    tiled = np.tile(ids, [r if chan[d] else 1 for d, r in enumerate(reps)])
    ctx.set(node, make_with_chan(tiled, chan, out_shape))


def rule_repeat_interleave(ctx: RuleContext, node: fx.Node) -> None:
    """repeat_interleave(x, repeats, dim): along a channel dim each id appears `repeats` times in a row
    (grouped-query attention's `k.repeat_interleave(groups, dim=1)` then ties each key/value head to its
    query heads); along a data dim the ids are unchanged (GCViT repeats its global query over the batch).
    Per-element repeats (a tensor) or no dim (the input flattened) have no rule."""
    src, out_shape = ctx.value(node.args[0]), ctx.shape(node)
    if src is None or out_shape is None:
        ctx.set(node, None)
        return
    repeats, dim = _arg(node, 1, "repeats"), _arg(node, 2, "dim")
    if dim is None:
        return rule_unsupported(ctx, node, "no dim: the input is flattened")
    dim %= src.ndim
    if not src.chan[dim]:
        return ctx.set(node, make_with_chan(src.ids, src.chan, out_shape))
    if not isinstance(repeats, int):
        return rule_unsupported(ctx, node, "repeats along a channel dim given per element")
    ctx.set(node, make_with_chan(np.repeat(src.ids, repeats, axis=dim), src.chan, out_shape))


def rule_cat(ctx: RuleContext, node: fx.Node) -> None:
    tensors = [ctx.value(t) for t in node.args[0]]
    out_shape = ctx.shape(node)
    tensors = [t for t in tensors if t is not None and t.ndim == len(out_shape)]
    ctx.set(node, _concatenated(ctx, tensors, _arg(node, 1, "dim", 0) % len(out_shape), out_shape))


def rule_stack(ctx: RuleContext, node: fx.Node) -> None:
    """stack(tensors, dim) is cat of the tensors unsqueezed at `dim`: their other dims line up, so their
    ids are tied position by position (RoPE's `stack([-x[..., 1::2], x[..., ::2]], -1)` pairs a head's dims)."""
    out_shape = ctx.shape(node)
    tensors = [ctx.value(t) for t in node.args[0]]
    if out_shape is None or any(t is None for t in tensors):
        return rule_unsupported(ctx, node, "stack of values without channel ids")
    dim = _arg(node, 1, "dim", 0) % len(out_shape)
    pieces = [Abstract(np.expand_dims(t.ids, dim), t.chan[:dim] + (False,) + t.chan[dim:],
                       _with_dim(out_shape, dim, 1)) for t in tensors]
    ctx.set(node, _concatenated(ctx, pieces, dim, out_shape))


def _concatenated(ctx: RuleContext, tensors: list[Abstract], dim: int, out_shape) -> Abstract:
    """The values joined along `dim`: offsets on a channel dim; along a data dim the pieces are tied."""
    if not any(t.chan[dim] for t in tensors):
        merged = broadcast_union(ctx, tensors, _with_dim(out_shape, dim, 1))
        return make_with_chan(merged.ids, merged.chan, out_shape)
    wide = {d for d in range(len(out_shape)) if any(t.chan[d] for t in tensors)} | {dim}
    parts = []
    for t in tensors:
        target = tuple(t.shape[d] if d in wide else 1 for d in range(t.ndim))
        parts.append(np.broadcast_to(t.ids, target))
    ids = np.concatenate(parts, axis=dim)
    return make_with_chan(ids, tuple(d in wide for d in range(len(out_shape))), out_shape)


def _with_dim(shape, dim, size):
    return tuple(size if d == dim else s for d, s in enumerate(shape))


def rule_split(ctx: RuleContext, node: fx.Node) -> None:
    """split / split_with_sizes / chunk / unbind / tensor_split -> a tuple, read by getitem."""
    src = ctx.value(node.args[0])
    outs = node.meta.get("val")
    if src is None or not isinstance(outs, (list, tuple)):
        ctx.set(node, None)
        return
    name = op_base(node.target)
    dim = _arg(node, 1, "dim", 0) if name == "unbind" else _arg(node, 2, "dim", 0)
    dim %= src.ndim
    sizes = [int(o.shape[dim]) if name != "unbind" else 1 for o in outs]
    _constrain_split(ctx, node, src, dim, sizes)
    results, start = [], 0
    for out, size in zip(outs, sizes):
        ids = src.ids
        if src.chan[dim]:
            ids = ids[(slice(None),) * dim + (slice(start, start + size),)]
        start += size
        chan = src.chan
        if name == "unbind":
            ids, chan = np.take(ids, 0, axis=dim), chan[:dim] + chan[dim + 1:]
        results.append(make_with_chan(ids, chan, tuple(int(s) for s in out.shape)))
    ctx.set(node, tuple(results))


def _constrain_split(ctx: RuleContext, node: fx.Node, src: Abstract, dim: int, sizes: list[int]) -> None:
    """chunk recomputes its pieces at run time: tie local indices so every piece keeps the same count.
    A split into equal pieces along the only channel dim (CSP's `x.split(self.expand_chs // 2, dim=1)`)
    is tied the same way on the assumption that its size follows the width (the rewrite refreshes the
    attribute it comes from); a size written as a literal breaks that, and verification then keeps the
    group whole. Unequal pieces of split_with_sizes are an offset map, each piece pruned on its own, where
    the rewrite can set the sizes (rules/split_sizes.py decides that once the modules are known); other
    splits along the only channel dim carry fixed sizes: blocked."""
    if not src.chan[dim] or len(sizes) < 2:
        return
    name, equal = op_base(node.target), len(set(sizes)) == 1
    if equal and name == "chunk":
        _tie_equal_pieces(ctx, src, dim, sizes)
    elif equal and sizes[0] > 1 and name in ("split", "split_with_sizes") and sum(src.chan) == 1:
        _tie_equal_pieces(ctx, src, dim, sizes)
        ctx.assume(src.ids, f"{name} into {len(sizes)} x {sizes[0]} channels follows the pruned width")
    elif name == "split_with_sizes" and sum(src.chan) == 1:
        ctx.sized_splits.append(SizedSplit(node, src.ids, tuple(sizes)))
    elif sum(src.chan) == 1:
        ctx.block(src.ids, ReasonKind.FIXED_SIZE, f"{name} along a channel dim uses sizes fixed in the code")


def _tie_equal_pieces(ctx: RuleContext, src: Abstract, dim: int, sizes: list[int]) -> None:
    moved = np.moveaxis(src.ids, dim, -1)
    pieces = moved.reshape(moved.shape[:-1] + (len(sizes), sizes[0]))
    ctx.union(pieces, pieces[..., :1, :])


def _fixed_index_block(ctx: RuleContext, src: Abstract, dim: int, op: str) -> None:
    """A literal slice/select along the only channel dim would go stale after pruning."""
    if src.chan[dim] and sum(src.chan) == 1:
        ctx.block(src.ids, ReasonKind.FIXED_SIZE, f"{op} along a channel dim uses indices fixed in the code")


def rule_slice(ctx: RuleContext, node: fx.Node) -> None:
    """slice / narrow. Along the only channel dim, bounds at exactly k/n and (k+1)/n of it (the middle third
    of a packed q|k|v bias, `b[n // 3:2 * n // 3]`) are taken as computed from the width, as an equal split
    is: the n pieces are tied to keep the same count, and verification confirms the assumption. Other
    bounds are recorded as a split whose inner bounds must be int attributes of the module that slices
    (DPN's `x[:, :self.num_1x1_c]`; rules/split_sizes.py decides once the modules are known), else are
    fixed in the code: blocked."""
    src, out_shape = ctx.value(node.args[0]), ctx.shape(node)
    if src is None or out_shape is None:
        ctx.set(node, None)
        return
    dim = _arg(node, 1, "dim", 0) % src.ndim
    start, end, step = _arg(node, 2, "start"), _arg(node, 3, "end"), _arg(node, 4, "step", 1)
    ids = src.ids
    if src.chan[dim]:
        size = src.shape[dim]
        start, end, step = slice(start, end, step).indices(size)
        if (start, end, step) != (0, size, 1):
            _constrain_slice(ctx, node, src, dim, start, end, step)
        ids = ids[(slice(None),) * dim + (slice(start, end, step),)]
    ctx.set(node, make_with_chan(ids, src.chan, out_shape))


def _constrain_slice(ctx: RuleContext, node: fx.Node, src: Abstract, dim: int, start: int, end: int,
                     step: int) -> None:
    size, piece = src.shape[dim], end - start
    if step == 1 and 1 < piece < size and size % piece == 0 and start % piece == 0 and sum(src.chan) == 1:
        pieces = size // piece
        _tie_equal_pieces(ctx, src, dim, [piece] * pieces)
        ctx.assume(src.ids, f"slice {start // piece + 1} of {pieces} equal pieces follows the pruned width")
    elif step == 1 and 0 < piece and src.chan[dim] and sum(src.chan) == 1:
        bounds = tuple(b for b in (start, end) if 0 < b < size)  # checked as attributes (split_sizes.py)
        pieces = tuple(p for p in (start, piece, size - end) if p > 0)
        ctx.sized_splits.append(SizedSplit(node, src.ids, pieces, bounds))
    else:
        _fixed_index_block(ctx, src, dim, "slice")


def rule_select(ctx: RuleContext, node: fx.Node) -> None:
    src, out_shape = ctx.value(node.args[0]), ctx.shape(node)
    if src is None or out_shape is None:
        ctx.set(node, None)
        return
    dim, index = node.args[1] % src.ndim, node.args[2]
    _fixed_index_block(ctx, src, dim, "select")
    ids = np.take(src.ids, index if src.chan[dim] else 0, axis=dim)
    ctx.set(node, make_with_chan(ids, src.chan[:dim] + src.chan[dim + 1:], out_shape))


def rule_flip(ctx: RuleContext, node: fx.Node) -> None:
    src = ctx.value(node.args[0])
    if src is None:
        ctx.set(node, None)
        return
    dims = [d % src.ndim for d in node.args[1]]
    ctx.set(node, make_with_chan(np.flip(src.ids, [d for d in dims if src.chan[d]]), src.chan, src.shape))


def rule_roll(ctx: RuleContext, node: fx.Node) -> None:
    src = ctx.value(node.args[0])
    if src is None:
        ctx.set(node, None)
        return
    shifts, dims = list(node.args[1]), [d % src.ndim for d in _arg(node, 2, "dims", [])]
    ids = src.ids
    for s, d in zip(shifts, dims):
        if src.chan[d]:
            ids = np.roll(ids, s, axis=d)
    ctx.set(node, make_with_chan(ids, src.chan, src.shape))


def rule_channel_shuffle(ctx: RuleContext, node: fx.Node) -> None:
    src = ctx.value(node.args[0])
    if src is None:
        ctx.set(node, None)
        return
    groups = node.args[1]
    ids = expand_to(src, {1})
    c = src.shape[1]
    moved = np.moveaxis(ids, 1, -1)
    ctx.grids.append(moved.reshape(moved.shape[:-1] + (groups, c // groups)))  # pruned as a sub-grid
    shuffled = moved.reshape(moved.shape[:-1] + (groups, c // groups)).swapaxes(-1, -2).reshape(moved.shape)
    ctx.set(node, make(np.moveaxis(shuffled, -1, 1), src.shape))


def rule_pad(ctx: RuleContext, node: fx.Node) -> None:
    """constant_pad_nd / pad: padding the only channel dim would add channels, so it blocks them. Where
    another dim carries channels, the padded dims' ids are each fibre's one unit instead (positions of a
    parameter grid, BoTNet's relative logits per head; a head's dims padded go with the whole head)."""
    src, out_shape = ctx.value(node.args[0]), ctx.shape(node)
    if src is None or out_shape is None:
        ctx.set(node, None)
        return
    padded = [d for d in range(src.ndim) if src.shape[d] != out_shape[d]]
    mixed = [d for d in padded if src.chan[d]]
    if mixed and any(c for d, c in enumerate(src.chan) if d not in padded):
        ctx.set(node, ctx.fibres_as_units(src, padded, out_shape))
        return
    if mixed:
        ctx.block(src.ids, ReasonKind.UNSUPPORTED_OP, "padding along a channel dim")
        ctx.set(node, ctx.fresh_data(out_shape))
        return
    ctx.set(node, make_with_chan(src.ids, src.chan, out_shape))


def rule_getitem(ctx: RuleContext, node: fx.Node) -> None:
    container = ctx.raw(node.args[0])
    index = node.args[1]
    ctx.set(node, container[index] if isinstance(container, tuple) and isinstance(index, int) else None)


