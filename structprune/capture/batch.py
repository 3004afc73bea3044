"""The batch axis of example inputs: its size, and the same inputs with another number of rows.

Every tensor input is assumed to carry the batch on dim 0 (0-dim tensors and non-tensors are left
alone); a batch of a different size is built by repeating the example rows cyclically.
"""
from __future__ import annotations

from typing import Any

import torch

from structprune.capture.export import normalize_inputs


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
