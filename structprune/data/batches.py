"""What a batch looks like to structprune: inputs (tensor, tuple or dict) plus optional labels.

Accepted batches: `(inputs, labels)`, `(inputs,)`, a bare tensor, or a dict of keyword inputs
with an optional "labels" entry (the Hugging Face convention; "label" and "y" are accepted too).
Every stage that reads batches (scoring, calibration, recovery, evaluation) splits them here.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

LABEL_KEYS = ("labels", "label", "y")  # dict entries that hold labels, first found wins


def split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """(inputs, labels or None) of one batch.

    >>> split_batch((torch.zeros(2, 3), torch.tensor([0, 1])))[1]
    tensor([0, 1])
    """
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        return inputs, next((batch[k] for k in LABEL_KEYS if k in batch), None)
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def run_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Call the model on tensor / tuple / dict inputs and return its logits tensor."""
    output = _CALLERS[_input_kind(inputs)](model, inputs)
    if hasattr(output, "logits"):
        return output.logits
    return output[0] if isinstance(output, (tuple, list)) else output


def move_to(inputs: Any, device: torch.device) -> Any:
    """The same inputs with every tensor on `device`."""
    return _MAPPERS[_input_kind(inputs)](inputs, lambda t: t.to(device))


def take_first(inputs: Any, count: int) -> Any:
    """The first `count` samples of a batch of inputs."""
    return _MAPPERS[_input_kind(inputs)](inputs, lambda t: t[:count])


def batch_size_of(inputs: Any) -> int:
    """Number of samples in a batch of inputs (the first tensor's leading size)."""
    if isinstance(inputs, torch.Tensor):
        return len(inputs)
    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    return batch_size_of(next(iter(values)))


def _input_kind(inputs: Any) -> str:
    if isinstance(inputs, Mapping):
        return "keywords"
    return "positional" if isinstance(inputs, (tuple, list)) else "tensor"


_CALLERS: Mapping[str, Callable[[nn.Module, Any], Any]] = {
    "tensor": lambda model, x: model(x),
    "positional": lambda model, args: model(*args),
    "keywords": lambda model, kwargs: model(**kwargs),
}

_MAPPERS: Mapping[str, Callable[[Any, Callable[[torch.Tensor], torch.Tensor]], Any]] = {
    "tensor": lambda x, fn: fn(x),
    "positional": lambda args, fn: type(args)(fn(a) for a in args),
    "keywords": lambda kwargs, fn: {k: fn(v) for k, v in kwargs.items()},
}
