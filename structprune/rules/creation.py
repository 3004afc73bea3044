"""Ops that create a tensor from literal sizes, borrowing only dtype and device from their input
(`x.new_zeros(H, W)`, Swin's attention mask). The input's channels are not read, so nothing is tied
to them; the new tensor has a size fixed in the code, so it carries a FIXED_SIZE reason that blocks
any channel dim it is later combined with at full size (broadcast use couples with nothing).
"""
from __future__ import annotations

from torch import fx

from structprune.ir.abstract import data_value
from structprune.ir.reasons import ReasonKind
from structprune.rules.context import RuleContext
from structprune.rules.fallback import op_key

NEW_TENSOR_OPS = ("new_zeros", "new_ones", "new_empty", "new_full", "new_empty_strided")


def rule_new_tensor(ctx: RuleContext, node: fx.Node) -> None:
    shape = ctx.shape(node)
    if shape is None:
        ctx.set(node, None)
        return
    reason = ctx.reason(ReasonKind.FIXED_SIZE, f"{op_key(node.target)} with literal sizes")
    ctx.set(node, data_value(shape, ctx.space.reason_id(reason)))
