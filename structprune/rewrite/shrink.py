"""The shrink table: after tensors are sliced, how each module type refreshes its attributes.

Keyed by class (looked up along the MRO); an entry is `(refresh, attrs)`: `refresh(module, old)` sets
the module's attributes from its sliced tensors, where `old` holds the attributes named in `attrs` as
they were before slicing, and "attention", the graph's attention mode. Extend it without mutating the
default, and pass the result to `compress`/`apply_plan` (`shrink_rules=`):

>>> class ChannelScale(nn.Module):  # a user's layer: forward reads self.channels and self.scale
...     pass
>>> def refresh_channel_scale(module, old):
...     module.channels = module.scale.shape[0]
>>> my_rules = DEFAULT_SHRINK_RULES | {ChannelScale: (refresh_channel_scale, ())}
>>> ChannelScale in my_rules and nn.Linear in my_rules
True

Attention modules that store head attributes are refreshed by rewrite/attention_attrs.py;
nn.MultiheadAttention loses heads ("heads" attention mode) or head dims ("head_dims" mode)."""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from torch import nn

from structprune.compat import ConvNd, NormBase, refresh_rnn_flat_weights
from structprune.rewrite.attention_attrs import attention_shape, refresh_attention


def _conv(m: nn.Module, old: dict) -> None:
    w = m.weight
    if m.transposed:
        m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
        return
    m.out_channels = w.shape[0]
    if old["groups"] == old["in_channels"] and old["groups"] > 1 and w.shape[1] == 1:
        multiplier = old["out_channels"] // old["groups"]
        m.groups = m.in_channels = m.out_channels // multiplier
    else:
        m.in_channels = w.shape[1] * m.groups


def _linear(m: nn.Module, old: dict) -> None:
    m.out_features, m.in_features = m.weight.shape


def _norm_features(m: nn.Module, old: dict) -> None:
    ref = m.weight if getattr(m, "weight", None) is not None else getattr(m, "running_mean", None)
    if ref is not None:
        m.num_features = ref.shape[0]


def _group_norm(m: nn.Module, old: dict) -> None:
    if m.weight is not None:
        m.num_channels = m.weight.shape[0]


def _layer_norm(m: nn.Module, old: dict) -> None:
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


def _embedding(m: nn.Module, old: dict) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


def _mha(m: nn.MultiheadAttention, old: dict) -> None:
    m.embed_dim = m.in_proj_weight.shape[1]
    m.kdim = m.vdim = m.embed_dim
    if old["attention"] == "head_dims":
        m.head_dim = m.embed_dim // m.num_heads
    else:
        m.num_heads = m.embed_dim // m.head_dim


def _prelu(m: nn.Module, old: dict) -> None:
    m.num_parameters = m.weight.numel()


def _rnn(m: nn.RNNBase, old: dict) -> None:
    """nn.LSTM / GRU / RNN: widths from layer 0's weights; the flat weight list follows the new tensors."""
    m.input_size, m.hidden_size = m.weight_ih_l0.shape[1], m.weight_hh_l0.shape[1]
    refresh_rnn_flat_weights(m)


DEFAULT_SHRINK_RULES = MappingProxyType({
    ConvNd: (_conv, ("groups", "in_channels", "out_channels")),
    nn.Linear: (_linear, ()),
    NormBase: (_norm_features, ()),
    nn.GroupNorm: (_group_norm, ()),
    nn.LayerNorm: (_layer_norm, ()),
    nn.Embedding: (_embedding, ()),
    nn.MultiheadAttention: (_mha, ()),
    nn.PReLU: (_prelu, ()),
    nn.RNNBase: (_rnn, ()),
})


def snapshot(module: nn.Module, table: Mapping = DEFAULT_SHRINK_RULES) -> dict:
    """The attributes the table (and the attention refresh) need from before slicing."""
    shape = attention_shape(module)
    old = {"attention_shape": shape} if shape is not None else {}
    for cls in type(module).__mro__:
        if cls in table:
            return old | {a: getattr(module, a) for a in table[cls][1]}
    return old


def refresh_attributes(module: nn.Module, old: dict, attention: str = "heads",
                       table: Mapping = DEFAULT_SHRINK_RULES) -> None:
    """Make the module's attributes agree with its sliced tensors (`attention`: the graph's mode)."""
    for cls in type(module).__mro__:
        if cls in table:
            table[cls][0](module, {**old, "attention": attention})
            break
    if "attention_shape" in old:
        refresh_attention(module, old["attention_shape"], attention, old.get("query_rows"))
