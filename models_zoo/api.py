"""Public entry points: create, list_models, spec, example_inputs, as_call_args."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from models_zoo.registry import (
    ZOO,
    ModelInputs,
    ZooEntry,
    ZooSpec,
    factory_defaults,
    input_shape_of,
)


def list_models() -> list[str]:
    """Sorted names of the registered zoo models.

    >>> "resnet20" in list_models()
    True
    """
    return sorted(ZOO)


def spec(name: str) -> ZooSpec:
    """The ZooSpec of a registered model (its default configuration).

    >>> spec("mlp").input_shape
    (64,)
    """
    return _lookup(name).spec


def create(name: str, **kw: Any) -> nn.Module:
    """Build a fresh zoo model (in training mode; call .eval() yourself).

    >>> create("resnet20", num_classes=100).head[-1].out_features
    100
    """
    entry = _lookup(name)
    _check_kwargs(entry, kw)
    return entry.factory(**kw)


def example_inputs(name: str, batch: int = 2, seed: int = 0, **kw: Any) -> ModelInputs:
    """Random inputs for `create(name, **kw)`: a tensor, or for token models a dict of kwargs.

    Token models get {"input_ids", "attention_mask"} (LongTensors (B, L)); the mask pads the
    tail of some rows. Pass the same **kw as to create (e.g. in_chans, image_size, seq_len).

    >>> example_inputs("cnn", batch=4, image_size=8, in_chans=1).shape
    torch.Size([4, 1, 8, 8])
    """
    entry = _lookup(name)
    _check_kwargs(entry, kw)
    settings = factory_defaults(entry.factory) | kw
    shape = input_shape_of(entry.spec.input_kind, settings)
    generator = torch.Generator().manual_seed(seed)
    if entry.spec.input_kind == "tokens":
        return _token_inputs(batch, shape[0], int(settings["vocab_size"]), generator)
    return torch.randn((batch, *shape), generator=generator)


def as_call_args(inputs: ModelInputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Split example_inputs into (args, kwargs) for model(*args, **kwargs) or torch.export.

    >>> args, kwargs = as_call_args(example_inputs("bert"))
    >>> args, sorted(kwargs)
    ((), ['attention_mask', 'input_ids'])
    """
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    return (inputs,), {}


def _token_inputs(
    batch: int, seq_len: int, vocab_size: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    input_ids = torch.randint(0, vocab_size, (batch, seq_len), generator=generator)
    lengths = torch.randint(seq_len // 2 + 1, seq_len + 1, (batch,), generator=generator)
    lengths[0] = seq_len  # at least one row without padding
    attention_mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _lookup(name: str) -> ZooEntry:
    if name not in ZOO:
        raise ValueError(f"unknown zoo model {name!r}; available: {', '.join(list_models())}")
    return ZOO[name]


def _check_kwargs(entry: ZooEntry, kw: Mapping[str, Any]) -> None:
    accepted = factory_defaults(entry.factory)
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise TypeError(
            f"zoo model {entry.spec.name!r} takes no argument(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(sorted(accepted))}"
        )
