"""What recovery expects of a batch: `(inputs, targets)`, where inputs is a tensor, a tuple of tensors
(positional arguments) or a dict (keyword arguments), and targets are class indices."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def split_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """(inputs, targets) from a loader batch; anything else is an error that says what was expected."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        return batch[0], batch[1]
    if isinstance(batch, dict) and "labels" in batch:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        return inputs, batch["labels"]
    raise TypeError("recovery needs loaders that yield (inputs, targets) pairs or dicts with a 'labels' key; "
                    f"got a {type(batch).__name__}")


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Call the model on tensor / tuple / dict inputs and return the logits tensor."""
    if isinstance(inputs, dict):
        out = model(**inputs)
    elif isinstance(inputs, (tuple, list)):
        out = model(*inputs)
    else:
        out = model(inputs)
    return getattr(out, "logits", out)


def model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
