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


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().contiguous().numpy()
