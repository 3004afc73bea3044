"""einsum: a two-operand contraction is a batched matrix product; one operand is a permute and a sum.

Labels of `A,B->O`:
  batch     in A, B and O          matmul batch dims (attention heads: see rules/attention.py)
  contract  in A and B, not in O   matmul K: A's channels <-> B's channels
  free      in one operand and O   matmul M (from A) or N (from B)
  summed    in one operand only    summed out first, like a reduction
A is permuted and reshaped to (batch…, M, K), B to (batch…, K, N); `matmul_abstract` ties them; the
result is reshaped to (batch…, free A…, free B…) and permuted to O. A 2-D parameter operand with one
contracted and one free label (`bnd,de->bne`) is a linear layer's weight, read axis by axis.
A label repeated within one operand (diagonals, traces) and three or more operands block, naming einsum.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
from torch import fx

from structprune.ir.abstract import Abstract, make_with_chan, representative
from structprune.ir.roles import ROLE_IN, ROLE_OUT
from structprune.rules.attention import matmul_abstract
from structprune.rules.context import RuleContext
from structprune.rules.fallback import rule_unsupported
from structprune.rules.layers import contract_last
from structprune.rules.shape import permuted, reshape_abstract


def parse_equation(equation: str, ranks: list[int]) -> tuple[list[list[str]], list[str]] | None:
    """Labels per operand and of the output ('...' expanded to labels '…0', '…1', aligned right)."""
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return None
    widths = [r - len(t.replace("...", "")) for t, r in zip(terms, ranks) if "..." in t]
    ellipsis = [f"…{i}" for i in range(max(widths, default=0))]
    operands = [_labels(t, r - len(t.replace("...", "")), ellipsis) for t, r in zip(terms, ranks)]
    if arrow:
        return operands, _labels(rhs, len(ellipsis), ellipsis)
    counts = Counter(label for labels in operands for label in labels)
    return operands, [e for e in ellipsis if e in counts] + sorted(
        label for label, n in counts.items() if n == 1 and label not in ellipsis)


def _labels(term: str, width: int, ellipsis: list[str]) -> list[str]:
    head, dots, tail = term.partition("...")
    return list(head) + (ellipsis[len(ellipsis) - width:] if dots and width else []) + list(tail)


def rule_einsum(ctx: RuleContext, node: fx.Node, head_dims: bool = False) -> None:
    operands = list(node.args[1])
    shapes, out_shape = [ctx.shape(t) for t in operands], ctx.shape(node)
    if out_shape is None or any(s is None for s in shapes):
        return rule_unsupported(ctx, node, "operands without shapes")
    parsed = parse_equation(node.args[0], [len(s) for s in shapes])
    if parsed is None or any(len(set(t)) != len(t) for t in parsed[0] + [parsed[1]]):
        return rule_unsupported(ctx, node, "a label repeated within one operand")
    terms, out = parsed
    if len(operands) == 2 and _projection(ctx, node, operands, terms, out):
        return None
    values = [ctx.value(t) for t in operands]  # (read after _projection: a weight is read per axis there)
    if any(v is None for v in values):
        return rule_unsupported(ctx, node, "operands that are not tensors")
    if len(operands) == 1:
        value, labels = _sum_out(ctx, values[0], terms[0], set(out))
        return ctx.set(node, permuted(value, [labels.index(label) for label in out]))
    if len(operands) != 2:
        return rule_unsupported(ctx, node, f"{len(operands)} operands")
    (a, la), (b, lb) = (_sum_out(ctx, v, t, set(out) | set(other))
                        for v, t, other in ((values[0], terms[0], terms[1]), (values[1], terms[1], terms[0])))
    if any(a.shape[la.index(label)] != b.shape[lb.index(label)] for label in la if label in lb and label not in out):
        return rule_unsupported(ctx, node, "a contracted label broadcast on one side")
    return ctx.set(node, _contract(ctx, (a, la), (b, lb), out, out_shape, head_dims))


def _sum_out(ctx: RuleContext, v: Abstract, labels: list[str], keep: set) -> tuple[Abstract, list[str]]:
    """Sum over the labels not in `keep` (a reduction: summed channels are flagged inexact)."""
    dims = [d for d, label in enumerate(labels) if label not in keep]
    if not dims:
        return v, labels
    summed = [d for d in dims if v.chan[d]]
    if summed:
        ctx.flag_inexact(v.ids, "einsum")
        if any(c for d, c in enumerate(v.chan) if d not in dims):
            ctx.union_fibres(v, summed)
    rest = [d for d in range(v.ndim) if d not in dims]
    ids = representative(v, set(dims)).reshape([v.ids.shape[d] for d in rest])
    shape, chan = tuple(v.shape[d] for d in rest), tuple(v.chan[d] for d in rest)
    out = make_with_chan(ids, chan, shape) if any(chan) else ctx.fresh_data(shape)
    return out, [labels[d] for d in rest]


def _contract(ctx: RuleContext, a_side, b_side, out: list[str], out_shape, head_dims: bool) -> Abstract:
    (a, la), (b, lb) = a_side, b_side
    size = dict(zip(out, out_shape))
    batch = [label for label in out if label in la and label in lb]
    free_a = [label for label in out if label in la and label not in lb]
    free_b = [label for label in out if label in lb and label not in la]
    contract = [label for label in la if label in lb and label not in out]
    a2 = _as_matrix(ctx, a, la, batch, free_a, contract)
    b2 = _as_matrix(ctx, b, lb, batch, contract, free_b)
    product = tuple(size[label] for label in batch) + (a2.shape[-2], b2.shape[-1])
    result = matmul_abstract(ctx, a2, b2, product, "einsum", head_dims=head_dims)
    order = batch + free_a + free_b
    result = reshape_abstract(ctx, result, tuple(size[label] for label in order))
    return permuted(result, [order.index(label) for label in out])


def _as_matrix(ctx: RuleContext, v: Abstract, labels, batch, rows, cols) -> Abstract:
    """`v` permuted to (batch…, rows…, cols…) and reshaped to (batch…, prod(rows), prod(cols))."""
    p = permuted(v, [labels.index(label) for label in batch + rows + cols])
    nb, nr = len(batch), len(rows)
    shape = tuple(p.shape[:nb]) + (int(np.prod(p.shape[nb:nb + nr])), int(np.prod(p.shape[nb + nr:])))
    return reshape_abstract(ctx, p, shape)


def _projection(ctx: RuleContext, node: fx.Node, operands, terms, out) -> bool:
    """A 2-D parameter with one contracted and one free label acts as a linear weight."""
    for w_at in (1, 0):
        weight, lw, lx = operands[w_at], terms[w_at], terms[1 - w_at]
        if ctx.fqn(weight) is None or len(lw) != 2:
            continue
        contracted = [label for label in lw if label in lx and label not in out]
        free = [label for label in lw if label not in lx and label in out]
        if len(contracted) != 1 or len(free) != 1:
            continue
        x = ctx.value(operands[1 - w_at])
        if x is None:
            return False
        x, lx = _sum_out(ctx, x, lx, set(lw) | set(out))
        k = lx.index(contracted[0])
        ctx.tie_dim(x, k, ctx.state_axis(weight, lw.index(contracted[0]), ROLE_IN), "einsum")
        out_ids = ctx.state_axis(weight, lw.index(free[0]), ROLE_OUT)
        order = [label for label in lx if label != contracted[0]] + free
        moved = permuted(x, [lx.index(label) for label in order[:-1]] + [k])
        shape = tuple(x.shape[lx.index(label)] for label in order[:-1]) + (out_ids.size,)
        result = contract_last(ctx, moved, out_ids, shape, "einsum")
        ctx.set(node, permuted(result, [order.index(label) for label in out]))
        return True
    return False
