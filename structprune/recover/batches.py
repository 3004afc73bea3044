"""What recovery expects of a batch: `(inputs, targets)`, where inputs is a tensor, a tuple of tensors
(positional arguments) or a dict (keyword arguments), and targets are class indices."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from structprune.calibrate.batches import model_device, to_device  # noqa: F401 - re-exported for recover/
from structprune.capture import eval_mode
from structprune.data.batches import split_batch


def labelled_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """(inputs, targets) from a loader batch; a batch without labels is an error that says what was expected."""
    inputs, targets = split_batch(batch)
    if targets is None:
        raise TypeError("recovery needs loaders that yield (inputs, targets) pairs or dicts with a 'labels' key; "
                        f"got a {type(batch).__name__} without labels")
    return inputs, targets


def forward(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Call the model on tensor / tuple / dict inputs and return the logits tensor."""
    if isinstance(inputs, dict):
        out = model(**inputs)
    elif isinstance(inputs, (tuple, list)):
        out = model(*inputs)
    else:
        out = model(inputs)
    return getattr(out, "logits", out)


def forward_inputs(model: nn.Module, loader, max_batches: int | None = None) -> None:
    """Run `model` (eval mode, no grad) on the inputs of up to `max_batches` batches, so that hooks
    registered around the call can observe the activations."""
    device = model_device(model)
    with eval_mode(model), torch.no_grad():
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            forward(model, to_device(split_batch(batch)[0], device))
