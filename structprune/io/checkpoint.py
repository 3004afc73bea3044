"""Weights files: find the state_dict inside a checkpoint and load it into an architecture.

A mismatch is reported as the first missing key, unexpected key or shape difference, so the user
sees at once whether the arch or its kwargs are wrong.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from structprune.errors import UsageError
from structprune.io.probe import first_line

# Where common training loops nest the weights inside a checkpoint dict, in lookup order.
CHECKPOINT_KEYS = ("state_dict", "model_state_dict", "model", "weights")
_DATA_PARALLEL_PREFIX = "module."


def find_state_dict(loaded: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping in `loaded`: itself, or nested under a usual checkpoint key."""
    if _is_tensor_mapping(loaded):
        return dict(loaded)
    if isinstance(loaded, Mapping):
        for key in CHECKPOINT_KEYS:
            if _is_tensor_mapping(loaded.get(key)):
                return dict(loaded[key])
    raise UsageError(
        f"{path} holds a {type(loaded).__name__} without a state_dict (a dict of tensor weights); "
        "save model.state_dict() or a .pt2 torch.export archive"
    )


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """`model.load_state_dict(state_dict, strict=True)` with a one-line explanation on mismatch."""
    state_dict = _strip_data_parallel_prefix(state_dict, model)
    problem = first_mismatch(model.state_dict(), state_dict)
    if problem is not None:
        raise UsageError(
            f"the state_dict in {path} does not fit architecture {arch}: {problem}; "
            "check --arch and --arch-kwargs match the model that saved it"
        )
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise UsageError(
            f"the state_dict in {path} does not fit architecture {arch}: {first_line(exc)}"
        ) from exc


def first_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, Any]) -> str | None:
    """Describe the first difference between two state_dicts (keys, then shapes), or None."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    if missing:
        return f"missing key {missing[0]!r}{_and_more(missing)}"
    if unexpected:
        return f"unexpected key {unexpected[0]!r}{_and_more(unexpected)}"
    for key, tensor in expected.items():
        shape, wanted = (tuple(getattr(t, "shape", ())) for t in (given[key], tensor))
        if shape != wanted:
            return f"{key!r} has shape {shape} in the file but {wanted} in the model"
    return None


def _and_more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""


def _is_tensor_mapping(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def _strip_data_parallel_prefix(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict:
    """Weights saved from a DDP/DataParallel wrapper carry a `module.` prefix the bare model lacks."""
    keys = list(state_dict)
    wrapped = all(k.startswith(_DATA_PARALLEL_PREFIX) for k in keys)
    model_wrapped = any(k.startswith(_DATA_PARALLEL_PREFIX) for k in model.state_dict())
    if not wrapped or model_wrapped:
        return state_dict
    return {k[len(_DATA_PARALLEL_PREFIX):]: v for k, v in state_dict.items()}
