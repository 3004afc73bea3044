"""torch.export for deployment: eval mode, a free batch axis, and a free sequence axis for tokens.

The analysis captures at the example's exact shapes; an artifact a user deploys must not. Here the
batch axis (dim 0 of every tensor input) and the sequence axis of token inputs (dim 1 of integer
tensors with two or more dims) are exported as `Dim.AUTO`: torch.export keeps them symbolic where
the model allows and specialises them where it does not (a reshape to a literal batch, a fixed
position table), instead of failing. `DeployedProgram` says which axes stayed free; `save_pt2` exports
and writes a `.pt2` archive atomically (io.pt2 checks and loads one).
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from structprune.capture.batch import batch_size, is_tokens, resize_batch
from structprune.capture.export import lean_export
from structprune.data.running import eval_mode, normalize_inputs
from structprune.errors import CaptureError
from structprune.io.atomic import write_atomically
from structprune.io.probe import first_line

_BATCH_AXIS, _SEQUENCE_AXIS = 0, 1


@dataclass(frozen=True)
class DeployedProgram:
    """An eval-mode exported program, the inputs it was traced with, and which axes stayed free."""

    program: torch.export.ExportedProgram
    example_inputs: Any
    dynamic_batch: bool
    dynamic_sequence: bool
    has_tokens: bool


def export_for_deployment(model: nn.Module, example_inputs: Any) -> DeployedProgram:
    """Export `model` in eval mode (its own flags are restored) with free batch and token axes.

    A batch of one invites torch.export to specialise the axis, so such inputs are traced at two
    rows (the example row repeated).

    >>> deployed = export_for_deployment(nn.Linear(4, 2), torch.randn(1, 4))
    >>> deployed.dynamic_batch, deployed.program.module()(torch.randn(5, 4)).shape
    (True, torch.Size([5, 2]))
    """
    with eval_mode(model), lean_export():
        if batch_size(example_inputs) == 1:
            try:
                return _deploy(model, resize_batch(example_inputs, 2))
            except Exception:  # noqa: BLE001 - the model only runs at its example batch; trace that
                pass
        return _deploy(model, example_inputs)


def _deploy(model: nn.Module, traced: Any) -> DeployedProgram:
    args, kwargs = normalize_inputs(traced)
    program = torch.export.export(model, args, kwargs, dynamic_shapes=_auto_shapes(model, args, kwargs),
                                  strict=False)
    free = _free_axes(program)
    return DeployedProgram(program, traced, _BATCH_AXIS in free, _SEQUENCE_AXIS in free,
                           any(is_tokens(t) for t in _tensors(args, kwargs)))


def _auto_shapes(model: nn.Module, args: tuple, kwargs: dict) -> tuple | dict:
    """dynamic_shapes for torch.export: AUTO on the batch axis and on token sequence axes."""
    def spec(value: Any) -> dict | None:
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return None
        axes = {_BATCH_AXIS: torch.export.Dim.AUTO}
        if is_tokens(value):
            axes[_SEQUENCE_AXIS] = torch.export.Dim.AUTO
        return axes

    if not kwargs:
        return tuple(pytree.tree_map(spec, a) for a in args)
    bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
    return {name: pytree.tree_map(spec, value) for name, value in bound.items()}


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]


def _free_axes(program: torch.export.ExportedProgram) -> set[int]:
    """Axes that are symbolic in every user input that has them (batch: all inputs with a dim 0;
    sequence: token inputs only)."""
    user = set(program.graph_signature.user_inputs)
    values = [n.meta.get("val") for n in program.graph.nodes if n.op == "placeholder" and n.name in user]
    tensors = [v for v in values if isinstance(v, torch.Tensor) and v.dim() > 0]
    free = set()
    if tensors and all(_is_symbolic(t.shape[_BATCH_AXIS]) for t in tensors):
        free.add(_BATCH_AXIS)
    tokens = [t for t in tensors if is_tokens(t)]
    if tokens and all(_is_symbolic(t.shape[_SEQUENCE_AXIS]) for t in tokens):
        free.add(_SEQUENCE_AXIS)
    return free


def _is_symbolic(size: Any) -> bool:
    return isinstance(size, torch.SymInt) and not isinstance(size.node.maybe_as_int(), int)


@dataclass(frozen=True)
class SavedPt2:
    """A `.pt2` archive written by `save_pt2`: where, and which axes stayed free (as in
    DeployedProgram); `example_inputs` are the inputs it was traced with (also stored inside it)."""

    path: Path
    dynamic_batch: bool
    dynamic_sequence: bool
    has_tokens: bool
    example_inputs: Any


def save_pt2(model: nn.Module, example_inputs: Any, path: str | os.PathLike[str]) -> SavedPt2:
    """Export `model` in eval mode with a free batch axis (and token axis) and save it atomically.

    `example_inputs` is a tensor, a tuple of positional inputs, or a dict of keyword inputs. The
    model's own training flags are left as they were.

    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "linear.pt2"
    >>> saved = save_pt2(torch.nn.Linear(4, 2), torch.randn(1, 4), target)
    >>> saved.path.name, saved.dynamic_batch
    ('linear.pt2', True)
    """
    try:
        deployed = export_for_deployment(model, example_inputs)
    except Exception as exc:  # noqa: BLE001 - re-raised with context
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__} to save {path} "
            f"({type(exc).__name__}: {first_line(exc)})"
        ) from exc
    written = write_atomically(path, lambda stream: torch.export.save(deployed.program, stream))
    return SavedPt2(written, deployed.dynamic_batch, deployed.dynamic_sequence, deployed.has_tokens,
                    deployed.example_inputs)
