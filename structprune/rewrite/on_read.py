"""Replace tensors at the moment a torch call reads them: a masked or sliced version of a tensor is made
for the one call that needs it and freed after, so running a model "as if" some of its tensors were
masked or sliced never holds a second copy of all of them (verification's two reference forwards)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

Replacements = dict[int, tuple[torch.Tensor, Callable[[], torch.Tensor]]]


class ReplacedOnRead(TorchFunctionMode):
    """Inside the block, a torch call that receives one of the tensors in `replacements` (by identity,
    anywhere in its arguments) receives `make()` instead, made for that call; views and results derived
    from it follow. `replacements`: id(tensor) -> (tensor, make).

    Models that pick a fused path only when no torch-function override is active (such as
    nn.MultiheadAttention's fast path) take their plain path inside the block.

    >>> lin = torch.nn.Linear(2, 1, bias=False)
    >>> with torch.no_grad():
    ...     _ = lin.weight.fill_(1.0)
    >>> with ReplacedOnRead({id(lin.weight): (lin.weight, lambda: torch.zeros(1, 2))}), torch.no_grad():
    ...     lin(torch.ones(1, 2)).item()
    0.0
    >>> lin.weight.tolist()
    [[1.0, 1.0]]
    """

    def __init__(self, replacements: Replacements) -> None:
        super().__init__()
        self.replacements = replacements

    def __torch_function__(self, func, types, args=(), kwargs=None):
        args, kwargs = pytree.tree_map(self._replaced, (args, kwargs or {}))
        return func(*args, **kwargs)

    def _replaced(self, value: Any) -> Any:
        found = self.replacements.get(id(value)) if isinstance(value, torch.Tensor) else None
        return found[1]() if found is not None and found[0] is value else value
