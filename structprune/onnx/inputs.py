"""Example inputs for export and onnxruntime: input names and onnxruntime feeds (torch outputs come
from `data.running.eval_outputs`).

`batch_size` and `resize_batch` live in capture.batch (the batch axis is shared with `.pt2` export).
"""
from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch
from torch import nn


def bound_inputs(model: nn.Module, args: tuple, kwargs: dict) -> dict[str, Any]:
    """forward()'s parameters bound to the example values, in signature order (raises TypeError)."""
    return dict(inspect.signature(model.forward).bind(*args, **kwargs).arguments)


def input_names(model: nn.Module, args: tuple, kwargs: dict) -> list[str]:
    """Names of the tensor inputs in call order: forward()'s parameter names (`name_<i>` inside a
    *args/**kwargs parameter); `input_<i>` and the keyword names where the signature cannot bind."""
    try:
        bound = bound_inputs(model, args, kwargs)
    except (TypeError, ValueError):
        bound = {f"input_{i}": a for i, a in enumerate(args)} | kwargs
    names = []
    for name, value in bound.items():
        if isinstance(value, torch.Tensor):
            names.append(name)
        elif isinstance(value, (tuple, list)):
            names += [f"{name}_{i}" for i, v in enumerate(value) if isinstance(v, torch.Tensor)]
        elif isinstance(value, dict):
            names += [k for k, v in value.items() if isinstance(v, torch.Tensor)]
    return names


def ort_feed(session: Any, args: tuple, kwargs: dict) -> dict[str, np.ndarray]:
    """Map an onnxruntime session's inputs to numpy arrays: keyword inputs by name, the rest by position."""
    positional = [a for a in args if isinstance(a, torch.Tensor)]
    feed = {}
    for node in session.get_inputs():
        if isinstance(kwargs.get(node.name), torch.Tensor):
            feed[node.name] = _to_numpy(kwargs[node.name])
        elif positional:
            feed[node.name] = _to_numpy(positional.pop(0))
        else:
            raise ValueError(
                f"the ONNX model expects an input '{node.name}' that example_inputs do not provide "
                f"(positional: {len(args)}, keyword: {sorted(kwargs)}); pass the inputs used at export"
            )
    return feed


def tokens_at(example_inputs: Any, batch: int, sequence: int) -> Any:
    """Token inputs (integer tensors, batch x sequence) resized to `batch` rows of `sequence` positions,
    rows and positions of the example repeated cyclically; an `attention_mask` entry becomes all ones
    (every position a real token). Other inputs keep their shape; the container kind is kept.

    >>> tokens_at({"input_ids": torch.tensor([[5, 6, 0]]), "attention_mask": torch.tensor([[1, 1, 0]])}, 2, 4)
    {'input_ids': tensor([[5, 6, 0, 5],
            [5, 6, 0, 5]]), 'attention_mask': tensor([[1, 1, 1, 1],
            [1, 1, 1, 1]])}
    """
    def resize(name: str | None, value: Any) -> Any:
        if not (isinstance(value, torch.Tensor) and value.dim() >= 2 and not value.is_floating_point()):
            return value
        rows = torch.arange(batch, device=value.device) % value.shape[0]
        positions = torch.arange(sequence, device=value.device) % value.shape[1]
        resized = value.index_select(0, rows).index_select(1, positions)
        return torch.ones_like(resized) if name == "attention_mask" else resized

    if isinstance(example_inputs, dict):
        return {k: resize(k, v) for k, v in example_inputs.items()}
    if isinstance(example_inputs, torch.Tensor):
        return resize(None, example_inputs)
    return tuple(resize(None, v) for v in example_inputs)


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().contiguous().numpy()
