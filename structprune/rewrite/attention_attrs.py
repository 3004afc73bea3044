"""Head attributes of attention modules, refreshed after their projections were sliced.

Attention code reshapes with stored attributes (timm `num_heads`/`head_dim`, Hugging Face
`num_attention_heads`/`attention_head_size`/`all_head_size`), so they must follow the sliced weights.
The query projection's width (heads x head_dim) is read before and after slicing: in the "heads"
attention mode head_dim stays and the head count follows; in "head_dims" mode the head count stays,
as it does wherever the plan kept some dims of every head (a single head; dims tied to a weight all
heads share), which the kept rows of the projection tell.
Softmax scale attributes (timm `scale`, HF `scaling`) are left as they were.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from structprune.compat import child_module
from structprune.rules.modules import HEAD_COUNTS, HEAD_SIZES, QUERY_PROJECTIONS

WIDTHS = ("all_head_size", "attn_dim")
HEAD_ATTRIBUTES = (*HEAD_COUNTS, *HEAD_SIZES, *WIDTHS)  # the names refresh_attention owns


@dataclass(frozen=True)
class AttentionShape:
    """An attention module's query projection, its width (heads x head_dim) and its head count."""

    projection: str
    width: int
    heads: int
    blocks: int = 1  # the projection's outputs are `blocks` x width (q|k|v: 3)

    @property
    def head_size(self) -> int:
        return self.width // self.heads


def _query_projection(module: nn.Module, stored: int | None) -> tuple[str, int, int] | None:
    """(name, width, blocks) of the module's query projection. Where the module stores both its head
    count and head size, their product `stored` is the width when the projection holds 1-3 blocks of it
    (GCViT's global attention names its k|v projection `qkv`); else the name's usual block count."""
    for name, blocks in QUERY_PROJECTIONS.items():
        linear = child_module(module, name)
        if not isinstance(linear, nn.Linear):
            continue
        if stored and linear.out_features % stored == 0 and linear.out_features // stored in (1, 2, 3):
            return name, stored, linear.out_features // stored
        if linear.out_features % blocks == 0:
            return name, linear.out_features // blocks, blocks
    return None


def _first_int(module: nn.Module, names: tuple[str, ...]) -> int | None:
    return next((getattr(module, n) for n in names if isinstance(getattr(module, n, None), int)), None)


def attention_shape(module: nn.Module) -> AttentionShape | None:
    """The shape of an attention module that stores head attributes (None for anything else).

    >>> class Attn(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.num_heads, self.head_dim, self.qkv = 4, 8, nn.Linear(32, 96)
    >>> attention_shape(Attn())
    AttentionShape(projection='qkv', width=32, heads=4, blocks=3)
    """
    if isinstance(module, nn.MultiheadAttention):  # the shrink table handles it
        return None
    count, size = _first_int(module, HEAD_COUNTS), _first_int(module, HEAD_SIZES)
    if count is None and size is None:
        return None
    found = _query_projection(module, count * size if count and size else None)
    if found is None:
        return None
    name, width, blocks = found
    heads = count if count is not None else width // size
    return AttentionShape(name, width, heads, blocks) if heads and width % heads == 0 else None


def refresh_attention(module: nn.Module, before: AttentionShape, attention: str,
                      query_rows: np.ndarray | None = None) -> None:
    """Set the head attributes the module has from its sliced query projection; `query_rows`: the rows
    of the projection the plan kept (None: not known, or none removed)."""
    width = getattr(module, before.projection).out_features // before.blocks
    whole = attention != "head_dims" and _whole_heads(query_rows, before, width)
    heads = width // before.head_size if whole else before.heads
    for names, value in ((HEAD_COUNTS, heads), (HEAD_SIZES, width // max(heads, 1)), (WIDTHS, width)):
        for name in names:
            if isinstance(getattr(module, name, None), int):
                setattr(module, name, value)


def _whole_heads(query_rows: np.ndarray | None, before: AttentionShape, width: int) -> bool:
    """Whether the plan removed whole heads (the "heads" mode), not some dims of every head: a head whose
    dims are tied to a weight that all heads share (MViTv2's pooling conv over head_dim) or the only head
    (hieradet's first stage) loses dims one by one in either mode. Read from the kept rows where known,
    else from the width being a multiple of the head size."""
    if query_rows is None:
        return width % before.head_size == 0
    first = np.asarray(query_rows)
    first = first[first < before.width]  # the query block of a packed q|k|v projection
    per_head = np.bincount(first // before.head_size, minlength=before.heads)
    return bool(np.all((per_head == 0) | (per_head == before.head_size)))
