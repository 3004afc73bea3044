"""Module invariants: ties a module class needs beyond what its graph shows.

nn.MultiheadAttention computes head_dim = embed_dim // num_heads and checks the query's width against
embed_dim, so its q/k/v projection rows, its input columns and out_proj's input columns must stay the
same size: they are tied element-wise. Whole heads (from the graph) then remove embed_dim in blocks.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from torch import nn

from structprune.graph.reasons import ReasonKind
from structprune.rules.context import RuleContext


def _mha(ctx: RuleContext, prefix: str, module: nn.MultiheadAttention) -> None:
    rows = ctx.axis_ids(f"{prefix}in_proj_weight", 0)
    cols = ctx.axis_ids(f"{prefix}in_proj_weight", 1)
    out_cols = ctx.axis_ids(f"{prefix}out_proj.weight", 1)
    if not module._qkv_same_embed_dim or rows is None or cols is None:
        for maps in (ctx.state_maps.get(f"{prefix}{n}", []) for n, _ in module.named_parameters()):
            for smap in maps:
                ctx.block(smap.ids, ReasonKind.MODULE_CONSTRAINT,
                          f"nn.MultiheadAttention '{prefix[:-1]}' with separate q/k/v projections")
        return
    ctx.union(rows.reshape(3, -1), cols[None, :])
    if out_cols is not None:
        ctx.union(out_cols, cols)


DEFAULT_MODULE_RULES = MappingProxyType({nn.MultiheadAttention: _mha})


def apply_module_rules(ctx: RuleContext, modules: Mapping[str, nn.Module], table: Mapping) -> None:
    """Run the invariant rule of each module's class (looked up along its MRO)."""
    for name, module in modules.items():
        for cls in type(module).__mro__:
            if cls in table:
                ctx.node = None
                table[cls](ctx, f"{name}." if name else "", module)
                break
