"""A group's consumer as a function B of its input map, for methods that need to re-run it
(i-SpaSP): B = the consumer layer followed by the normalisation that directly reads its output, if
any (found in a forward pass by tensor identity, duck-typed on a `running_var` buffer -- no module
classes). B must be affine for residuals B(H) - B(H_S) to mean "what the dropped channels did";
`is_affine` checks that numerically instead of trusting a type."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from structprune.data.running import call_model, forward_hooks


@dataclass(frozen=True, eq=False)
class Consumer:
    """Consumer layer `layer` (module name) and the norm applied right after it (or None)."""

    layer: nn.Module
    norm: nn.Module | None

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        out = self.layer(h)
        return self.norm(out) if self.norm is not None else out


def consumers(model: nn.Module, names: list[str], x: Any) -> dict[str, Consumer]:
    """Consumer functions for module names, each with its directly-following norm."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # holding the tensor keeps its id unique
    following: dict[str, str] = {}

    def record(name: str):
        def hook(module, args, out):
            if isinstance(out, torch.Tensor):
                outputs[id(out)] = (name, out)
        return hook

    def match(name: str):
        def hook(module, args):
            if args and id(args[0]) in outputs and outputs[id(args[0])][1] is args[0]:
                following.setdefault(outputs[id(args[0])][0], name)
        return hook

    norms = [n for n, m in model.named_modules() if getattr(m, "running_var", None) is not None]
    with forward_hooks(model, pre={n: match(n) for n in norms}, post={n: record(n) for n in set(names)}), \
            torch.no_grad():
        call_model(model, x)
    return {n: Consumer(model.get_submodule(n), model.get_submodule(following[n]) if n in following else None)
            for n in names}


def is_affine(fn: Consumer, sample: torch.Tensor, rtol: float = 1e-3) -> bool:
    """B(a + b) + B(0) == B(a) + B(b) on two inputs shaped like `sample` (a chunk of real input)."""
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        a = sample[:2]
        b = torch.randn(a.shape, generator=gen).to(a)
        try:
            lhs = fn(a + b) + fn(torch.zeros_like(a))
            rhs = fn(a) + fn(b)
        except (RuntimeError, TypeError, ValueError, IndexError):  # it cannot run on its own: not usable
            return False
    scale = float(rhs.abs().max()) + 1e-12
    return float((lhs - rhs).abs().max()) <= rtol * scale
