"""The rule for ops without a rule: block every channel the op touches, naming the op."""
from __future__ import annotations

import torch
from torch import fx

from structprune.ir.abstract import data_value
from structprune.ir.ops import op_key  # the rule tables' key; re-exported here for the rule modules
from structprune.ir.reasons import Reason, ReasonKind
from structprune.rules.context import RuleContext, tensor_inputs

__all__ = ["op_key", "rule_unsupported"]


def rule_unsupported(ctx: RuleContext, node: fx.Node, why: str = "") -> None:
    """Block all inputs' channels; outputs carry the block onward as a data value."""
    detail = op_key(node.target) + (f" ({why})" if why else "")
    reason = Reason(ReasonKind.UNSUPPORTED_OP, detail, node.name)
    rid = ctx.space.reason_id(reason)
    for arg in tensor_inputs(node):
        value = ctx.value(arg)
        if value is not None:
            ctx.union(value.ids, rid)
    ctx.set(node, _blocked_outputs(ctx, node, rid))


def _blocked_outputs(ctx: RuleContext, node: fx.Node, rid: int):
    val = node.meta.get("val")
    if isinstance(val, torch.Tensor):
        return data_value(tuple(val.shape), rid)
    if isinstance(val, (list, tuple)):
        return tuple(
            data_value(tuple(v.shape), rid) if isinstance(v, torch.Tensor) else None for v in val
        )
    return None
