"""The batch axis of example inputs (its size, the same inputs with another number of rows) and the
sequence axis of token inputs (integer tensors of two or more dims: batch, sequence, ...).

Every tensor input is assumed to carry the batch on dim 0 (0-dim tensors and non-tensors are left
alone); a batch of a different size is built by repeating the example rows cyclically.
"""
from __future__ import annotations

from typing import Any

import torch

from structprune.data.running import normalize_inputs


def batch_size(example_inputs: Any) -> int:
    """The size of dim 0 of the first tensor input with at least one dim.

    >>> batch_size({"x": torch.zeros(3, 2)})
    3
    """
    args, kwargs = normalize_inputs(example_inputs)
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise ValueError("example_inputs hold no tensor with a batch dimension (dim 0); export needs one")


def resize_batch(example_inputs: Any, size: int) -> Any:
    """The same inputs (same container kind) with `size` rows: example rows repeated cyclically.

    >>> resize_batch(torch.arange(2).view(2, 1), 3).flatten().tolist()
    [0, 1, 0]
    """
    def resize(value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return value
        rows = torch.arange(size) % value.shape[0]
        return value.index_select(0, rows.to(value.device))

    if isinstance(example_inputs, torch.Tensor):
        return resize(example_inputs)
    if isinstance(example_inputs, dict):
        return {k: resize(v) for k, v in example_inputs.items()}
    return tuple(resize(v) for v in example_inputs)


def is_tokens(value: Any) -> bool:
    """Integer tensors of two or more dims are token ids or masks: (batch, sequence, ...)."""
    return (isinstance(value, torch.Tensor) and value.dim() >= 2 and not value.is_floating_point()
            and not value.is_complex())


def shorter_sequence(example_inputs: Any) -> Any | None:
    """The same token inputs one position shorter; None unless every input with two or more dims is
    tokens with a sequence of at least two.

    >>> shorter_sequence({"input_ids": torch.ones(2, 5, dtype=torch.long)})["input_ids"].shape
    torch.Size([2, 4])
    """
    args, kwargs = normalize_inputs(example_inputs)
    wide = [v for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor) and v.dim() >= 2]
    if not wide or not all(is_tokens(v) and v.shape[1] >= 2 for v in wide):
        return None

    def cut(value: Any) -> Any:
        return value[:, :-1] if isinstance(value, torch.Tensor) and value.dim() >= 2 else value

    if isinstance(example_inputs, torch.Tensor):
        return cut(example_inputs)
    if isinstance(example_inputs, dict):
        return {k: cut(v) for k, v in example_inputs.items()}
    return tuple(cut(v) for v in example_inputs)
