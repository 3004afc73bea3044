"""Running a network block by block, as sequential calibration in SparseGPT (Frantar & Alistarh 2023)
and its structured successors do: the inputs of the first block are caught once per batch, then each
block runs on what the block before it returned, so refitting layer after layer costs one pass over
the data per block instead of one pass from the network's input per layer.

A chain is a ModuleList/Sequential whose children ("blocks") hold every layer to refit, are each called
once per forward pass in their order, each reading the previous block's output (its first tensor) as
its first positional argument, and all receiving the same other arguments as the first block (an
attention mask, rotary position embeddings). That is checked on a real batch (by value), never
assumed from the container's type; where it does not hold there is no chain and callers run prefixes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from structprune.data.batches import same_values
from structprune.data.running import Call, call_model, first_tensor

CONTAINERS = (nn.ModuleList, nn.Sequential)


@dataclass(frozen=True)
class Chain:
    """The blocks (module names, in call order) that hold every layer to refit."""

    blocks: tuple[str, ...]

    def block_of(self, name: str) -> str | None:
        """The block holding module `name` (None: outside every block)."""
        return next((b for b in self.blocks if name.startswith(b + ".")), None)


def find_chain(model: nn.Module, x: Any, names: list[str]) -> Chain | None:
    """The innermost container whose children hold all of `names` and replay as a chain on input `x`
    (None: no such container)."""
    candidates = []
    for prefix, module in model.named_modules():
        if isinstance(module, CONTAINERS) and len(module) >= 2 and prefix:
            blocks = tuple(f"{prefix}.{child}" for child, _ in module.named_children())
            chain = Chain(blocks)
            if all(chain.block_of(n) is not None for n in names):
                candidates.append(chain)
    for chain in sorted(candidates, key=lambda c: -len(c.blocks[0])):
        if replays(model, chain, x):
            return chain
    return None


def with_stream(call: Call, stream: torch.Tensor) -> Call:
    """The same call with another first positional argument (the stream a block reads)."""
    return Call((stream, *call.args[1:]), call.kwargs)


def replays(model: nn.Module, chain: Chain, x: Any) -> bool:
    """True if, on `x`, the blocks are called once each in order, each on the previous one's output
    with the first block's other arguments, and replaying them so reproduces the model's pass."""
    calls: list[tuple[str, Call, Any]] = []

    def watch(name):
        def pre(module, args, kwargs):
            calls.append((name, Call(tuple(args), dict(kwargs)), None))

        def post(module, args, kwargs, out):
            calls[-1] = (calls[-1][0], calls[-1][1], first_tensor(out))
        return pre, post

    handles = []
    try:
        for name in chain.blocks:
            pre, post = watch(name)
            module = model.get_submodule(name)
            handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            handles.append(module.register_forward_hook(post, with_kwargs=True))
        with torch.no_grad():
            call_model(model, x)
    except (RuntimeError, TypeError, ValueError, IndexError):
        return False
    finally:
        for handle in handles:
            handle.remove()
    if [c[0] for c in calls] != list(chain.blocks) or not calls[0][1].args:
        return False
    first = calls[0][1]
    for (_, _, before_out), (_, call, _) in zip(calls, calls[1:]):
        if not isinstance(before_out, torch.Tensor) or not call.args or not same_values(call.args[0], before_out):
            return False
        if not same_values((call.args[1:], call.kwargs), (first.args[1:], first.kwargs)):
            return False
    return _same_outputs(model, calls)


def _same_outputs(model: nn.Module, calls: list[tuple[str, Call, Any]]) -> bool:
    """Replaying the first block's call through the chain gives each block's recorded output."""
    stream = calls[0][1].args[0]
    with torch.no_grad():
        for name, call, out in calls:
            stream = first_tensor(model.get_submodule(name)(*with_stream(call, stream).args, **call.kwargs))
            if not isinstance(stream, torch.Tensor) or not same_values(stream, out):
                return False
    return True
