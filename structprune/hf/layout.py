"""Where a Hugging Face family keeps the widths its config describes, and the sizes read back from modules.

A `Layout` names, relative to `model.base_model`, the list of blocks and, inside a block, the attention
module, its query (and key) projection and the MLP's first projection; and which config fields hold
the MLP width and the key/value head count. `layer_sizes` reads each block's actual sizes from the
pruned modules: the head size from the attention module's head-size attribute (which the rewrite's
attention refresh keeps right), head counts from the projection widths, the MLP width from its
projection, and checks them against the head counts the attention module stores.

Read-only table; extend a copy for another family and pass it as `layouts=`:
`LAYOUTS | {"mistral": LAYOUTS["llama"]}`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType

from torch import nn

from structprune.calibrate.layers import form_of
from structprune.errors import VerificationError
from structprune.rules.modules import HEAD_COUNTS, HEAD_SIZES


@dataclass(frozen=True)
class Layout:
    """Module paths of one family (see the module docstring) and its config field names."""

    layers: str
    attention: str
    query: str
    mlp_in: str
    key: str | None = None  # the key projection, read for grouped-query attention (with kv_field)
    qkv_blocks: int = 1  # the query projection holds q alone (1) or q, k, v side by side (3, GPT-2's c_attn)
    intermediate_field: str = "intermediate_size"
    kv_field: str | None = None


@dataclass(frozen=True)
class LayerSizes:
    """One block's widths, in the config's terms (`num_key_value_heads` is None without a key projection)."""

    intermediate_size: int
    num_attention_heads: int
    head_dim: int
    num_key_value_heads: int | None = None

    def to_json(self) -> dict:
        """The block's entry of `config.structprune_layers`."""
        return {k: v for k, v in asdict(self).items() if v is not None}


_BERT = Layout("encoder.layer", "attention.self", "query", "intermediate.dense")
_DECODER = Layout("layers", "self_attn", "q_proj", "mlp.up_proj", key="k_proj", kv_field="num_key_value_heads")
_GPT2 = Layout("h", "attn", "c_attn", "mlp.c_fc", qkv_blocks=3, intermediate_field="n_inner")
_DISTILBERT = Layout("transformer.layer", "attention", "q_lin", "ffn.lin1", intermediate_field="hidden_dim")
_VIT = Layout("layers", "attention", "q_proj", "mlp.fc1")

LAYOUTS: Mapping[str, Layout] = MappingProxyType({
    "bert": _BERT, "roberta": _BERT, "xlm-roberta": _BERT,
    "llama": _DECODER, "mistral": _DECODER, "qwen2": _DECODER, "qwen3": _DECODER,
    "gpt2": _GPT2, "distilbert": _DISTILBERT, "vit": _VIT,
})


def out_width(module: nn.Module) -> int:
    """Output features of a projection: nn.Linear's weight is (out, in), transformers' Conv1D's (in, out)."""
    return _width(module, outputs=True)


def in_width(module: nn.Module) -> int:
    """Input features of a projection (see `out_width`)."""
    return _width(module, outputs=False)


def _width(module: nn.Module, outputs: bool) -> int:
    form = form_of(module)  # the layer forms reconstruction knows: Linear, Conv1D, Conv2d
    if form is not None and form.channel_last:
        return int(module.weight.shape[form.output_axis if outputs else form.input_axis])
    raise VerificationError(f"Hugging Face config: {type(module).__name__} is not a projection whose width "
                            "structprune can read")


def layer_sizes(model: nn.Module, layout: Layout) -> tuple[LayerSizes, ...]:
    """Every block's sizes as its modules hold them."""
    blocks = model.base_model.get_submodule(layout.layers)
    return tuple(_block_sizes(block, layout, f"{layout.layers}.{i}") for i, block in enumerate(blocks))


def _block_sizes(block: nn.Module, layout: Layout, where: str) -> LayerSizes:
    attention = block.get_submodule(layout.attention)
    head_dim = _int_attribute(attention, HEAD_SIZES)
    if head_dim is None:
        raise VerificationError(f"Hugging Face config: {where}.{layout.attention} stores no head size "
                                f"({', '.join(HEAD_SIZES)})")
    heads = _heads(out_width(attention.get_submodule(layout.query)) // layout.qkv_blocks, head_dim, where)
    stored = _int_attribute(attention, HEAD_COUNTS)
    if stored is not None and stored != heads:
        raise VerificationError(f"Hugging Face config: {where}.{layout.attention} stores {stored} heads, but its query "
                                f"projection holds {heads} heads of size {head_dim}")
    kv = _heads(out_width(attention.get_submodule(layout.key)), head_dim, where) if layout.kv_field else None
    return LayerSizes(out_width(block.get_submodule(layout.mlp_in)), heads, head_dim, kv)


def _heads(width: int, head_dim: int, where: str) -> int:
    if head_dim <= 0 or width % head_dim:
        raise VerificationError(f"Hugging Face config: {where}: a projection of width {width} is not whole heads "
                                f"of size {head_dim}")
    return width // head_dim


def _int_attribute(module: nn.Module, names: tuple[str, ...]) -> int | None:
    return next((getattr(module, n) for n in names if isinstance(getattr(module, n, None), int)), None)


def config_fields(model: nn.Module, sizes: tuple[LayerSizes, ...], layout: Layout) -> dict:
    """The config fields that describe `sizes` (the largest value where blocks differ): hidden size from
    the first block's query projection's input (the stream every block reads; a ViT's input embedding is
    a patch convolution), heads, MLP width, key/value heads (grouped-query attention), and `head_dim`
    where the config has it or the head size is no longer hidden size / heads."""
    first = model.base_model.get_submodule(layout.layers)[0]
    hidden = in_width(first.get_submodule(layout.attention).get_submodule(layout.query))
    heads = max(s.num_attention_heads for s in sizes)
    fields = {"hidden_size": hidden, "num_attention_heads": heads,
              layout.intermediate_field: max(s.intermediate_size for s in sizes)}
    if layout.kv_field is not None:
        fields[layout.kv_field] = max(s.num_key_value_heads for s in sizes)
    head_dim = max(s.head_dim for s in sizes)
    if getattr(model.config, "head_dim", None) is not None or hidden != heads * head_dim:
        fields["head_dim"] = head_dim
    return fields
