"""The one place that runs a model: how inputs become a call, how outputs become tensors or logits,
eval mode, the model's device, and forward hooks. Every stage calls models through this module.

Inputs (see `data.batches`): a tensor is one positional argument, a tuple/list is the positional
arguments, a dict (any Mapping) is the keyword arguments, a `Call` is both (what a hook caught).

Logits: `logits_of` reads one rule, shared by scoring, calibration, recovery and evaluation —
a tensor output is the logits; else a `logits` attribute (a Hugging Face ModelOutput) or a "logits"
key of a dict; else the first item of a tuple/list when it is a tensor. Anything else is an error
naming what the model returned.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree

from structprune.data.batches import split_batch, to_device

PreHook = Callable[[nn.Module, tuple], Any]
PostHook = Callable[[nn.Module, tuple, Any], Any]

_LOGITS_RULES: tuple[tuple[Callable[[Any], bool], Callable[[Any], Any]], ...] = (
    (lambda out: isinstance(out, torch.Tensor), lambda out: out),
    (lambda out: isinstance(getattr(out, "logits", None), torch.Tensor), lambda out: out.logits),
    (lambda out: isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor), lambda out: out["logits"]),
    (lambda out: isinstance(out, (tuple, list)) and len(out) > 0 and isinstance(out[0], torch.Tensor),
     lambda out: out[0]),
)


@dataclass(frozen=True)
class Call:
    """Positional and keyword arguments of one module call, as a forward pre-hook sees them."""

    args: tuple
    kwargs: dict = field(default_factory=dict)


class StopForward(Exception):
    """Raised by a hook to end a forward pass early, once what it needed was seen."""


def normalize_inputs(example_inputs: Any) -> tuple[tuple, dict]:
    """A tensor, a tuple/list of tensors, or a dict of keyword inputs -> (args, kwargs).

    >>> normalize_inputs({"x": torch.zeros(1)})
    ((), {'x': tensor([0.])})
    """
    if not isinstance(example_inputs, (torch.Tensor, Mapping, tuple, list)):
        raise ValueError(
            f"example_inputs must be a tensor, a tuple of tensors or a dict of keyword inputs, "
            f"got {type(example_inputs).__name__}"
        )
    return _as_call(example_inputs)


def call_model(model: nn.Module, inputs: Any) -> Any:
    """model(x), model(*x) or model(**x) by the form of `inputs`; the raw output (hooks see the call)."""
    args, kwargs = _as_call(inputs)
    return model(*args, **kwargs)


def find_logits(output: Any) -> torch.Tensor | None:
    """The logits tensor of a model output by the module's rule, or None where the rule finds none."""
    return next((read(output) for applies, read in _LOGITS_RULES if applies(output)), None)


def logits_of(output: Any) -> torch.Tensor:
    """The logits tensor of a model output by the module's rule; an error naming the output otherwise.

    >>> logits_of((torch.ones(1, 2), torch.zeros(1))).tolist()
    [[1.0, 1.0]]
    """
    logits = find_logits(output)
    if logits is None:
        raise TypeError(f"cannot read logits from the model's output, a {_describe(output)}: return a tensor, a "
                        "tuple/list whose first item is the logits tensor, or a dict / ModelOutput with 'logits'")
    return logits


def model_logits(model: nn.Module, inputs: Any) -> torch.Tensor:
    """Call the model on tensor / tuple / dict inputs and return its logits (see the module's rule)."""
    return logits_of(call_model(model, inputs))


def flat_outputs(output: Any) -> list[torch.Tensor]:
    """Tensor leaves of a model output (tensor, tuple, dict, ModelOutput, ...) in pytree order."""
    return [t for t in pytree.tree_leaves(output) if isinstance(t, torch.Tensor)]


def first_tensor(output: Any) -> torch.Tensor | None:
    """The first tensor leaf of a module's output (None: it returned no tensor).

    >>> first_tensor((None, torch.ones(2))).tolist()
    [1.0, 1.0]
    """
    return next(iter(flat_outputs(output)), None)


def eval_outputs(model: nn.Module, inputs: Any) -> list[torch.Tensor]:
    """Eval-mode, no-grad outputs as a flat list of tensors (training flags restored afterwards).

    >>> [t.shape for t in eval_outputs(nn.Linear(3, 2), torch.zeros(4, 3))]
    [torch.Size([4, 2])]
    """
    args, kwargs = normalize_inputs(inputs)
    with eval_mode(model), torch.no_grad():
        return flat_outputs(model(*args, **kwargs))


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (CPU for a stateless model)."""
    first = next(chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


@contextmanager
def eval_mode(model: nn.Module | None) -> Iterator[nn.Module | None]:
    """Eval mode inside the block; afterwards every module's own training flag is restored. `None`
    is allowed (an optional teacher). A GraphModule from ExportedProgram.module() cannot switch modes
    (it keeps the mode it was exported in) and is left as it is."""
    if model is None:
        yield None
        return
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
    except (NotImplementedError, RuntimeError):
        yield model
        return
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


@contextmanager
def train_mode_only(model: nn.Module, wanted: Callable[[nn.Module], bool]) -> Iterator[list[nn.Module]]:
    """Eval mode except for the modules where `wanted(m)` holds, which train; flags restored after."""
    with eval_mode(model):
        chosen = [m for m in model.modules() if wanted(m)]
        for module in chosen:
            module.training = True
        yield chosen


@contextmanager
def forward_hooks(model: nn.Module, pre: Mapping[str, PreHook] | None = None,
                  post: Mapping[str, PostHook] | None = None) -> Iterator[None]:
    """Register forward pre-hooks (`pre`) and forward hooks (`post`) on named submodules; all are
    removed when the block exits, even on error. A pre-hook may return replacement args, as in PyTorch."""
    handles = []
    try:
        for name, fn in (pre or {}).items():
            handles.append(model.get_submodule(name).register_forward_pre_hook(fn))
        for name, fn in (post or {}).items():
            handles.append(model.get_submodule(name).register_forward_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


def forward_inputs(model: nn.Module, loader: Iterable, max_batches: int | None = None) -> None:
    """Run `model` (eval mode, no grad, on its device) on the inputs of up to `max_batches` batches,
    so that hooks registered around the call can observe the activations."""
    device = model_device(model)
    with eval_mode(model), torch.no_grad():
        for index, batch in enumerate(loader):
            if max_batches is not None and index >= max_batches:
                break
            call_model(model, to_device(split_batch(batch)[0], device))


def first_call(model: nn.Module, name: str, x: Any) -> Call:
    """The arguments module `name` receives when the model runs on `x`; the forward pass stops there."""
    seen: list[Call] = []

    def catch(module: nn.Module, args: tuple, kwargs: dict) -> None:
        seen.append(Call(tuple(args), dict(kwargs)))
        raise StopForward

    handle = model.get_submodule(name).register_forward_pre_hook(catch, with_kwargs=True)
    try:
        call_model(model, x)
    except StopForward:
        pass
    finally:
        handle.remove()
    if not seen:
        raise RuntimeError(f"module '{name}' was not called during the forward pass")
    return seen[0]


def run_until(model: nn.Module, x: Any, name: str) -> torch.Tensor:
    """The first positional input that module `name` receives when the model runs on `x`; the
    forward pass stops there."""
    return first_call(model, name, x).args[0]


def call_order(model: nn.Module, x: Any, names: list[str]) -> list[str]:
    """`names` sorted by when each module is first called on input `x` (never-called ones last)."""
    order: dict[str, int] = {}

    def note(name: str) -> PreHook:
        def hook(module: nn.Module, args: tuple) -> None:
            order.setdefault(name, len(order))
        return hook

    with forward_hooks(model, pre={n: note(n) for n in set(names)}), torch.no_grad():
        call_model(model, x)
    return sorted(names, key=lambda n: (order.get(n, len(order)), names.index(n)))


def _as_call(inputs: Any) -> tuple[tuple, dict]:
    """(args, kwargs): a Mapping is keyword inputs, a tuple/list positional ones, a Call both, anything
    else one input."""
    if isinstance(inputs, Call):
        return inputs.args, dict(inputs.kwargs)
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    return (tuple(inputs), {}) if isinstance(inputs, (tuple, list)) else ((inputs,), {})


def _describe(output: Any) -> str:
    if isinstance(output, Mapping):
        return f"{type(output).__name__} with keys {sorted(map(str, output))}"
    if isinstance(output, (tuple, list)):
        return f"{type(output).__name__} of {[type(v).__name__ for v in output]}"
    return type(output).__name__
