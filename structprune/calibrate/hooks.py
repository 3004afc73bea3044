"""Hooks that live only inside context managers, which always remove them (even on error).

`forward_hooks(model, pre=..., post=...)` registers forward pre-hooks / forward hooks by module
name; `eval_mode` and `train_mode_only` switch modes and restore every module's flag afterwards;
`run_until(model, x, name)` runs a forward pass only as far as one module's input."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import nn

from structprune.calibrate.batches import run_model
from structprune.capture.export import eval_mode  # noqa: F401 - the one implementation, re-exported

PreHook = Callable[[nn.Module, tuple], Any]
PostHook = Callable[[nn.Module, tuple, Any], Any]


class StopForward(Exception):
    """Raised by a hook to end a forward pass early, once what it needed was seen."""


@contextmanager
def forward_hooks(model: nn.Module, pre: Mapping[str, PreHook] | None = None,
                  post: Mapping[str, PostHook] | None = None) -> Iterator[None]:
    """Register forward pre-hooks (`pre`) and forward hooks (`post`) on named submodules; all are
    removed when the block exits. A pre-hook may return replacement args, as in PyTorch."""
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


@contextmanager
def train_mode_only(model: nn.Module, wanted: Callable[[nn.Module], bool]) -> Iterator[list[nn.Module]]:
    """Eval mode except for the modules where `wanted(m)` holds, which train; flags restored after."""
    with eval_mode(model):
        chosen = [m for m in model.modules() if wanted(m)]
        for module in chosen:
            module.training = True
        yield chosen


def run_until(model: nn.Module, x: Any, name: str) -> torch.Tensor:
    """The first positional input that module `name` receives when the model runs on `x`; the
    forward pass stops there."""
    seen: list[torch.Tensor] = []

    def grab(module: nn.Module, args: tuple) -> None:
        seen.append(args[0])
        raise StopForward

    with forward_hooks(model, pre={name: grab}):
        try:
            run_model(model, x)
        except StopForward:
            pass
    if not seen:
        raise RuntimeError(f"module '{name}' was not called during the forward pass")
    return seen[0]


def call_order(model: nn.Module, x: Any, names: list[str]) -> list[str]:
    """`names` sorted by when each module is first called on input `x` (never-called ones last)."""
    order: dict[str, int] = {}

    def note(name: str) -> PreHook:
        def hook(module: nn.Module, args: tuple) -> None:
            order.setdefault(name, len(order))
        return hook

    with forward_hooks(model, pre={n: note(n) for n in set(names)}), torch.no_grad():
        run_model(model, x)
    return sorted(names, key=lambda n: (order.get(n, len(order)), names.index(n)))
