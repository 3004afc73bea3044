"""The channel rule table: normalised op key -> rule(ctx, node).

Tables are values. Extend without mutating the default:

>>> from structprune.rules import DEFAULT_RULES, rule_elementwise
>>> my_rules = DEFAULT_RULES | {"mylib.fused_act": rule_elementwise}
>>> "aten.conv2d" in my_rules and "mylib.fused_act" in my_rules
True

An op whose key is not in the table is handled by `rule_unsupported`: it blocks every channel it touches
and names the op. Nothing is guessed to be element-wise.
"""
from __future__ import annotations

from functools import partial
from types import MappingProxyType
from typing import Callable

import torch

from structprune.compat import OpOverloadPacket
from structprune.errors import UsageError
from structprune.ir.ops import op_key
from structprune.rules import (
    advanced_index,
    attention,
    creation,
    einsum,
    elementwise,
    indexing,
    layers,
    modules,
    norms,
    recurrent,
    reduce,
    shape,
    weights,
)
from structprune.rules.context import RuleContext
from structprune.rules.elementwise import rule_elementwise
from structprune.rules.fallback import rule_unsupported
from structprune.rules.modules import DEFAULT_MODULE_RULES

Rule = Callable[[RuleContext, object], None]


def _aten(names, rule_for) -> dict[str, Rule]:
    return {f"aten.{name}": rule_for(name) for name in names}


def _named(fn):
    return lambda name: partial(fn, op=name)


def _same(fn):
    return lambda name: fn


_TABLE: dict[str, Rule] = {}
_TABLE |= _aten(elementwise.ELEMENTWISE_OPS, _same(rule_elementwise))
_TABLE |= _aten(
    ("view", "reshape", "_unsafe_view", "flatten", "unflatten", "squeeze", "unsqueeze", "view_as",
     "reshape_as", "_reshape_alias", "view_copy", "squeeze_copy", "unsqueeze_copy"),
    _same(shape.rule_reshape),
)
_TABLE |= _aten(("permute", "permute_copy", "movedim"), _same(shape.rule_permute))
_TABLE |= _aten(("transpose", "t", "swapaxes", "swapdims", "transpose_copy"), _same(shape.rule_transpose))
_TABLE |= _aten(("numpy_T",), _same(shape.rule_reverse_dims))
_TABLE |= _aten(elementwise.EXPAND_OPS, _same(shape.rule_expand))
_TABLE |= _aten(("cat", "concat", "concatenate"), _same(shape.rule_cat))
_TABLE |= _aten(("stack",), _same(shape.rule_stack))
_TABLE |= _aten(("split", "split_with_sizes", "chunk", "unbind", "tensor_split"), _same(shape.rule_split))
_TABLE |= _aten(("slice", "slice_copy", "narrow"), _same(shape.rule_slice))
_TABLE |= _aten(("select", "select_copy"), _same(shape.rule_select))
_TABLE |= _aten(("repeat",), _same(shape.rule_repeat))
_TABLE |= _aten(("tile",), _same(shape.rule_tile))
_TABLE |= _aten(("repeat_interleave",), _same(shape.rule_repeat_interleave))
_TABLE |= _aten(("flip",), _same(shape.rule_flip))
_TABLE |= _aten(("roll",), _same(shape.rule_roll))
_TABLE |= _aten(("channel_shuffle", "native_channel_shuffle"), _same(shape.rule_channel_shuffle))
_TABLE |= _aten(("constant_pad_nd", "pad", "reflection_pad1d", "reflection_pad2d", "replication_pad1d",
                 "replication_pad2d"), _same(shape.rule_pad))
_TABLE["getitem"] = shape.rule_getitem
_TABLE |= _aten(("conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
                 "conv_transpose2d", "conv_transpose3d"), _named(layers.rule_conv))
_TABLE |= _aten(("linear",), _same(layers.rule_linear))
_TABLE |= _aten(("embedding",), _same(layers.rule_embedding))
_TABLE |= _aten(("prelu", "_prelu_kernel"), _same(layers.rule_prelu))
_TABLE |= _aten(("mm", "bmm", "matmul", "addmm", "baddbmm"), _named(attention.rule_matmul))
_TABLE |= _aten(("scaled_dot_product_attention",), _same(attention.rule_sdpa))
_TABLE["aten.einsum"] = einsum.rule_einsum
_TABLE |= _aten(("batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
                 "native_batch_norm", "instance_norm", "cudnn_batch_norm"), _same(norms.rule_batch_norm))
_TABLE |= _aten(("layer_norm", "native_layer_norm", "rms_norm", "_fused_rms_norm"), _same(norms.rule_layer_norm))
_TABLE |= _aten(("group_norm",), _same(norms.rule_group_norm))
_TABLE |= _aten(("native_group_norm",), _same(norms.rule_native_group_norm))
_TABLE |= _aten(reduce.REDUCTION_OPS, _named(reduce.rule_reduction))
_TABLE |= _aten(reduce.SOFTMAX_OPS, _named(reduce.rule_softmax))
_TABLE |= _aten(reduce.SPATIAL_OPS, _named(reduce.rule_spatial))
_TABLE |= _aten(recurrent.RECURRENT_OPS, _same(recurrent.rule_rnn))
_TABLE |= {"aten.pixel_shuffle": indexing.rule_pixel_shuffle, "aten.pixel_unshuffle": indexing.rule_pixel_unshuffle,
           "aten.index_select": indexing.rule_index_select}
_TABLE["aten.index"] = advanced_index.rule_index
_TABLE |= _aten(creation.NEW_TENSOR_OPS, _same(creation.rule_new_tensor))
_TABLE["aten._weight_norm"] = partial(rule_unsupported, why="weight norm read other than as a layer weight")
_TABLE |= {key: weights.deferrable(rule) for key, rule in _TABLE.items() if key in weights.EDGES}


def with_inplace_variants(table: dict[str, Rule]) -> dict[str, Rule]:
    """`table` plus, for every `aten.X` in it, the in-place op `aten.X_` with the same rule: an
    in-place op writes exactly what its functional form returns, and torch.export keeps it as a node
    whose output later nodes read (`out += identity` is `aten.add_`). `out=` variants are overloads
    of the functional packet, so they share its key already.

    >>> "aten.add_" in with_inplace_variants({"aten.add": rule_elementwise})
    True
    """
    variants = {f"{key}_": rule for key, rule in table.items()
                if key.startswith("aten.") and not key.endswith("_") and _has_inplace(key[len("aten."):])}
    return variants | table


def _has_inplace(name: str) -> bool:
    try:
        return isinstance(getattr(torch.ops.aten, f"{name}_"), OpOverloadPacket)
    except AttributeError:
        return False


DEFAULT_RULES: MappingProxyType = MappingProxyType(with_inplace_variants(_TABLE))

# Attention modes: which unit a head-carrying matmul/sdpa prunes. "heads" removes whole heads;
# "head_dims" keeps every head and removes the same dims from each (see rules/attention.py).
_HEAD_DIM_OVERRIDES: dict[str, Rule] = {}
_HEAD_DIM_OVERRIDES |= _aten(("mm", "bmm", "matmul", "addmm", "baddbmm"),
                             lambda name: partial(attention.rule_matmul, op=name, head_dims=True))
_HEAD_DIM_OVERRIDES |= _aten(("scaled_dot_product_attention",), _same(partial(attention.rule_sdpa, head_dims=True)))
_HEAD_DIM_OVERRIDES["aten.einsum"] = partial(einsum.rule_einsum, head_dims=True)
# mode -> (op rule overrides, module rule overrides)
ATTENTION_MODES: MappingProxyType = MappingProxyType({
    "heads": (MappingProxyType({}), MappingProxyType({})),
    "head_dims": (MappingProxyType(_HEAD_DIM_OVERRIDES), modules.HEAD_DIM_MODULE_OVERRIDES),
})


def check_attention_mode(mode: str) -> None:
    """UsageError unless `mode` is one of ATTENTION_MODES."""
    if mode not in ATTENTION_MODES:
        raise UsageError(f"unknown attention mode '{mode}'; choose one of: {', '.join(ATTENTION_MODES)}")


def attention_tables(mode: str, rules=DEFAULT_RULES, module_rules=DEFAULT_MODULE_RULES):
    """(`rules`, `module_rules`) with the attention rules of `mode` ("heads" or "head_dims") laid over.

    >>> attention_tables("heads")[0] == DEFAULT_RULES
    True
    """
    check_attention_mode(mode)
    op_rules, module_overrides = ATTENTION_MODES[mode]
    return (MappingProxyType(dict(rules) | dict(op_rules)),
            MappingProxyType(dict(module_rules) | dict(module_overrides)))


__all__ = ["ATTENTION_MODES", "DEFAULT_RULES", "Rule", "RuleContext", "op_key", "rule_elementwise",
           "rule_unsupported", "attention_tables", "check_attention_mode", "with_inplace_variants"]
