"""Which module a forward failed in: a model pruned in some groups only can fail to run (its widths
agree only together with other groups'), and verification must say where, not re-raise torch's error."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from torch import nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

T = TypeVar("T")


class ModelRunError(Exception):
    """A forward raised inside `module` (its FQN in the model that ran; "" for the root)."""

    def __init__(self, module: str, message: str) -> None:
        super().__init__(f"in module '{module or '<root>'}': {message}")
        self.module, self.message = module, message


@contextmanager
def _module_stack(model: nn.Module) -> Iterator[list[str]]:
    """The FQNs of `model`'s modules whose forward is running, innermost last (global hooks, removed
    on exit). A forward that raises never pops, so after a failure the list ends at its module."""
    names = {id(m): n for n, m in model.named_modules()}
    stack: list[str] = []

    def enter(module, args):
        if id(module) in names:
            stack.append(names[id(module)])

    def leave(module, args, output):
        if id(module) in names and stack:
            stack.pop()

    handles = (register_module_forward_pre_hook(enter), register_module_forward_hook(leave))
    try:
        yield stack
    finally:
        for handle in handles:
            handle.remove()


def run_locating(model: nn.Module, run: Callable[[], T]) -> T:
    """`run()`, which runs `model`; any exception becomes a ModelRunError naming the innermost module."""
    with _module_stack(model) as stack:
        try:
            return run()
        except Exception as exc:  # noqa: BLE001 - re-raised with the module that failed
            message = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            raise ModelRunError(stack[-1] if stack else "", message) from exc
