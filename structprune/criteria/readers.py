"""Where a consumer's output goes: the module that reads it plus a residual stream (its "reader").

In residual networks a consumer's output O is added to a stream R and a module (typically a LayerNorm)
reads Z = O + R. The reader is found by probing, not by module type: on one batch, the first module
called after the consumer whose input moves by exactly delta when delta is added to the consumer's
output, and which reads more than the output itself (so a dropout in between is skipped). A reader that
normalises each position (reader(2 Z) == reader(Z), as LayerNorm) makes the error of a position count
in units of that position's spread. Least-squares criteria (`obs`) and the refits of
`structprune.calibrate.reconstruct` weight their rows by it alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from structprune.data.running import StopForward, call_model, forward_hooks

PROBE_MODULES = 16  # modules after the consumer that may be its reader


@dataclass(frozen=True)
class Reader:
    """Module `name` reads the stream the consumer's output is added to; `normalises` per position."""

    name: str
    normalises: bool


def find_reader(model: nn.Module, name: str, x: Any) -> Reader | None:
    """The module reading `name`'s output plus a residual, probed on input `x` (None: no such module)."""
    names = [n for n, _ in model.named_modules() if n and n != name and not n.startswith(name + ".")]
    plain, out = _inputs_after(model, name, names, x, None)
    if out is None:
        return None
    delta = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out) * (out.std() + 1e-6)
    moved, _ = _inputs_after(model, name, names, x, delta)
    for (reader, z), (again, z_moved) in zip(plain, moved):
        if reader != again or z.shape != out.shape:
            continue
        tol = 1e-4 * float(delta.abs().max())
        if float((z_moved - z - delta).abs().max()) <= tol and float((z - out).abs().max()) > tol:
            return Reader(reader, _normalises(model.get_submodule(reader), z))
    return None


def find_readers(model: nn.Module, names, x: Any) -> dict[str, Reader]:
    """The reader of each of the modules `names` that has one, probed on input `x`."""
    found = {name: find_reader(model, name, x) for name in dict.fromkeys(names)}
    return {name: reader for name, reader in found.items() if reader is not None}


def spread_weights(z: torch.Tensor) -> torch.Tensor:
    """1 / var over the channels (last dim) of the stream `z`, per position: how much an error at each
    position counts once a reader that normalises has divided by its spread."""
    return 1.0 / z.detach().float().var(dim=-1).clamp(min=1e-12)


def _inputs_after(model, name, names, x, delta):
    """[(module, first tensor input)] of the modules called after `name`'s output (at most
    PROBE_MODULES), with `delta` added to that output; and the output itself."""
    state: dict[str, Any] = {"out": None, "after": []}

    def output(module, args, out):
        if state["out"] is None and isinstance(out, torch.Tensor):
            state["out"] = out.detach()
            return out + delta if delta is not None else out
        return None

    def watch(module_name):
        def hook(module, args):
            if state["out"] is not None and args and isinstance(args[0], torch.Tensor):
                state["after"].append((module_name, args[0].detach()))
                if len(state["after"]) >= PROBE_MODULES:
                    raise StopForward
        return hook

    with forward_hooks(model, pre={n: watch(n) for n in names}, post={name: output}), torch.no_grad():
        try:
            call_model(model, x)
        except StopForward:
            pass
    return state["after"], state["out"]


def _normalises(module: nn.Module, z: torch.Tensor) -> bool:
    """True if module(2 z) == module(z): the module divides each position by its own spread."""
    try:
        with torch.no_grad():
            one, two = module(z), module(2.0 * z)
    except (RuntimeError, TypeError, ValueError, IndexError):
        return False
    return isinstance(one, torch.Tensor) and bool(torch.allclose(one, two, rtol=1e-3, atol=1e-4))
