"""Calibration batches: read a loader that yields `(x, y)`, `x` alone, or dicts of inputs, up to a
sample budget, on the model's device; run the model on one batch whatever form its input takes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import nn

from structprune.data.batches import split_batch


@dataclass(frozen=True, eq=False)
class Batch:
    """One calibration batch: model input `x` (tensor, tuple or dict) and labels `y` (or None)."""

    x: Any
    y: torch.Tensor | None

    @property
    def size(self) -> int:
        first = next(iter(self.x.values())) if isinstance(self.x, dict) else self.x
        first = first[0] if isinstance(first, (tuple, list)) else first
        return int(first.shape[0])


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    for tensor in list(model.parameters()) + list(model.buffers()):
        return tensor.device
    return torch.device("cpu")


def to_device(value: Any, device: torch.device) -> Any:
    """The same (nested) inputs with every tensor on `device`."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(to_device(v, device) for v in value)
    return value


def calibration_batches(loader: Iterable, max_samples: int | None, device: torch.device,
                        *, need_labels: bool = False, who: str = "calibration") -> Iterator[Batch]:
    """Batches from `loader` until `max_samples` samples were read (the last batch is trimmed)."""
    if loader is None:
        raise ValueError(f"{who} needs calibration data: pass data=<DataLoader yielding (x, y)>")
    seen = 0
    for raw in loader:
        x, y = split_batch(raw)
        if need_labels and y is None:
            raise ValueError(f"{who} needs labelled data: the loader must yield (x, y) pairs")
        batch = Batch(to_device(x, device), None if y is None else to_device(y, device))
        if max_samples is not None and seen + batch.size > max_samples:
            batch = _trim(batch, max_samples - seen)
        if batch.size == 0:
            return
        seen += batch.size
        yield batch
        if max_samples is not None and seen >= max_samples:
            return


def _trim(batch: Batch, n: int) -> Batch:
    def cut(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v[:n]
        if isinstance(v, dict):
            return {k: cut(t) for k, t in v.items()}
        if isinstance(v, (tuple, list)):
            return type(v)(cut(t) for t in v)
        return v

    return Batch(cut(batch.x), cut(batch.y))


def run_model(model: nn.Module, x: Any) -> Any:
    """model(x), model(*x) or model(**x) depending on the input's form."""
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, (tuple, list)):
        return model(*x)
    return model(x)


def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor of a model output (a tensor, a tuple's first item, or `.logits`)."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, dict):
        return output["logits"]
    return output[0]
