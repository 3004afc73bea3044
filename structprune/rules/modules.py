"""Module invariants: ties a module class needs beyond what its graph shows.

nn.MultiheadAttention computes head_dim = embed_dim // num_heads and checks the query's width against
embed_dim, so its q/k/v projection rows, its input columns and out_proj's input columns must stay the
same size: they are tied element-wise. Whole heads (from the graph) then remove embed_dim in blocks.

In the "head_dims" attention mode, an attention module with separate query and value projections and a
stored head attribute (timm/HF style) reshapes q, k and v with one head_dim, so its query and value
rows are tied element-wise too (sdpa ties them in the graph already; a matmul-written attention does not).
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
from torch import nn

from structprune.compat import ConvNd, mha_packed_qkv
from structprune.ir.reasons import ReasonKind
from structprune.rules.context import RuleContext


def _mha(ctx: RuleContext, prefix: str, module: nn.MultiheadAttention) -> None:
    rows = ctx.axis_ids(f"{prefix}in_proj_weight", 0)
    cols = ctx.axis_ids(f"{prefix}in_proj_weight", 1)
    out_cols = ctx.axis_ids(f"{prefix}out_proj.weight", 1)
    if not mha_packed_qkv(module) or rows is None or cols is None:
        for maps in (ctx.state_maps.get(f"{prefix}{n}", []) for n, _ in module.named_parameters()):
            for smap in maps:
                ctx.block(smap.ids, ReasonKind.MODULE_CONSTRAINT,
                          f"nn.MultiheadAttention '{prefix[:-1]}' with separate q/k/v projections")
        return
    ctx.union(rows.reshape(3, -1), cols[None, :])
    if out_cols is not None:
        ctx.union(out_cols, cols)


# attribute names attention modules use (the rewrite reads them too); query projection -> its q/k/v blocks
QUERY_PROJECTIONS = MappingProxyType({"qkv": 3, "to_qkv": 3, "qk": 2, "query": 1, "q_proj": 1, "q": 1, "wq": 1})
VALUE_PROJECTIONS = MappingProxyType({"qk": "v", "query": "value", "q_proj": "v_proj", "q": "v", "wq": "wv"})
HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_heads")
HEAD_SIZES = ("head_dim", "attention_head_size", "head_size")


def _one_head_dim(ctx: RuleContext, prefix: str, module: nn.Module) -> None:
    if not any(isinstance(getattr(module, n, None), int) for n in HEAD_COUNTS + HEAD_SIZES):
        return
    for query, value in VALUE_PROJECTIONS.items():
        rows_q = ctx.axis_ids(f"{prefix}{query}.weight", 0)
        rows_v = ctx.axis_ids(f"{prefix}{value}.weight", 0)
        if rows_q is not None and rows_v is not None and rows_q.shape == rows_v.shape:
            ctx.union(rows_q, rows_v)
            return


def tie_input_width(ctx: RuleContext, prefix: str, module: nn.Module) -> None:
    """For attention code that takes its width from the input (`B, N, C = x.shape`, then
    `reshape(B, N, 3, self.num_heads, C // self.num_heads)` and `reshape(B, N, C)`): heads x head_dim
    must stay equal to the input width, so each q/k/v block's rows are tied element-wise to the
    projection's input columns. Whole heads (or per-head dims) then take their share of the input
    width with them, and every width agrees at any ratio."""
    for name, blocks in QUERY_PROJECTIONS.items():
        rows, cols = ctx.axis_ids(f"{prefix}{name}.weight", 0), ctx.axis_ids(f"{prefix}{name}.weight", 1)
        if rows is None or cols is None or rows.size != blocks * cols.size:
            continue
        for block in rows.reshape(blocks, -1):
            ctx.union(block, cols)
        value = ctx.axis_ids(f"{prefix}{VALUE_PROJECTIONS.get(name, '')}.weight", 0)
        if value is not None and value.size == cols.size:
            ctx.union(value, cols)
        _tie_width_keeping_children(ctx, prefix, module, cols)
        return


def _tie_width_keeping_children(ctx: RuleContext, prefix: str, module: nn.Module, cols: np.ndarray) -> None:
    """The module's other layers that read its input width and write 1-3 blocks of it (PVT v2's spatial
    reduction conv, reshaped by `reshape(B, C, -1)`; its k|v projection): each block tied to that width."""
    for name, child in module.named_children():
        if not isinstance(child, (nn.Linear, ConvNd)):
            continue
        rows, inputs = ctx.axis_ids(f"{prefix}{name}.weight", 0), ctx.axis_ids(f"{prefix}{name}.weight", 1)
        if rows is None or inputs is None or inputs.size != cols.size or rows.size % cols.size:
            continue
        if rows.size // cols.size in (1, 2, 3) and getattr(child, "groups", 1) == 1:
            for block in rows.reshape(rows.size // cols.size, -1):
                ctx.union(block, cols)


def with_input_width_ties(table: Mapping, classes) -> Mapping:
    """`table` plus `tie_input_width` for every module of `classes` (after that class's own rule)."""
    def chained(base):
        def rule(ctx: RuleContext, prefix: str, module: nn.Module) -> None:
            if base is not None:
                base(ctx, prefix, module)
            tie_input_width(ctx, prefix, module)
        return rule

    extra = {cls: chained(next((table[c] for c in cls.__mro__ if c in table), None)) for cls in classes}
    return MappingProxyType({**table, **extra})


DEFAULT_MODULE_RULES = MappingProxyType({nn.MultiheadAttention: _mha})
HEAD_DIM_MODULE_OVERRIDES = MappingProxyType({nn.Module: _one_head_dim})


def apply_module_rules(ctx: RuleContext, modules: Mapping[str, nn.Module], table: Mapping) -> None:
    """Run the invariant rule of each module's class (looked up along its MRO)."""
    for name, module in modules.items():
        for cls in type(module).__mro__:
            if cls in table:
                ctx.node = None
                table[cls](ctx, f"{name}." if name else "", module)
                break
