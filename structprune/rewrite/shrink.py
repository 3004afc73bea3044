"""The shrink table: after tensors are sliced, how each module type refreshes its attributes.

Keyed by class (looked up along the MRO), plus attribute fixers for attention modules that store head
counts (timm-style `num_heads`/`head_dim`, Hugging Face-style `num_attention_heads`)."""
from __future__ import annotations

from types import MappingProxyType

from torch import nn


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
    m.num_heads = m.embed_dim // m.head_dim


def _prelu(m: nn.Module, old: dict) -> None:
    m.num_parameters = m.weight.numel()


SHRINK_TABLE = MappingProxyType({
    nn.modules.conv._ConvNd: (_conv, ("groups", "in_channels", "out_channels")),
    nn.Linear: (_linear, ()),
    nn.modules.batchnorm._NormBase: (_norm_features, ()),
    nn.GroupNorm: (_group_norm, ()),
    nn.LayerNorm: (_layer_norm, ()),
    nn.Embedding: (_embedding, ()),
    nn.MultiheadAttention: (_mha, ()),
    nn.PReLU: (_prelu, ()),
})


def _timm_heads(m: nn.Module) -> None:
    qkv = getattr(m, "qkv", None)
    if isinstance(qkv, nn.Linear) and isinstance(getattr(m, "head_dim", None), int):
        m.num_heads = qkv.out_features // (3 * m.head_dim)


def _hf_heads(m: nn.Module) -> None:
    query = getattr(m, "query", None) or getattr(m, "q_proj", None)
    size = getattr(m, "attention_head_size", None) or getattr(m, "head_dim", None)
    if isinstance(query, nn.Linear) and isinstance(size, int):
        if hasattr(m, "all_head_size"):
            m.all_head_size = query.out_features
        for name in ("num_attention_heads", "num_heads"):
            if hasattr(m, name):
                setattr(m, name, query.out_features // size)


ATTRIBUTE_FIXERS = (
    (lambda m: hasattr(m, "num_heads") and hasattr(m, "qkv"), _timm_heads),
    (lambda m: hasattr(m, "query") or hasattr(m, "q_proj"), _hf_heads),
)


def snapshot(module: nn.Module) -> dict:
    """The attributes the table needs from before slicing."""
    for cls in type(module).__mro__:
        if cls in SHRINK_TABLE:
            return {a: getattr(module, a) for a in SHRINK_TABLE[cls][1]}
    return {}


def refresh_attributes(module: nn.Module, old: dict) -> None:
    """Make the module's attributes agree with its sliced tensors."""
    for cls in type(module).__mro__:
        if cls in SHRINK_TABLE:
            SHRINK_TABLE[cls][0](module, old)
            break
    for applies, fix in ATTRIBUTE_FIXERS:
        if applies(module):
            fix(module)
