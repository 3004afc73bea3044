"""Model size and cost: parameter count and multiply-accumulates (MACs) for one forward pass.

MACs are read off a captured graph's shapes with a small rule table (no forward pass): the ops that
carry essentially all the arithmetic — convolutions, linear layers, matrix products, attention —
counted the way torch's FlopCounterMode counts them (FLOPs / 2)."""
from __future__ import annotations

import math
from typing import Any

from torch import fx, nn

from structprune.capture import Captured, capture


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (tied parameters counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _shape(arg) -> tuple[int, ...]:
    return tuple(int(s) for s in arg.meta["val"].shape)


def _conv(node: fx.Node) -> int:
    w = _shape(node.args[1])
    transposed = "transpose" in str(node.target) or (
        "convolution" in str(node.target) and len(node.args) > 6 and bool(node.args[6]))
    if transposed:
        return math.prod(_shape(node.args[0])) * math.prod(w[1:])
    return math.prod(_shape(node)) * math.prod(w[1:])


def _linear(node: fx.Node) -> int:
    return math.prod(_shape(node)) * _shape(node.args[1])[-1]


def _matmul(node: fx.Node) -> int:
    a = node.args[1] if "add" in str(node.target) else node.args[0]
    return math.prod(_shape(node)) * _shape(a)[-1]


def _sdpa(node: fx.Node) -> int:
    q, k, v = (_shape(a) for a in node.args[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


_MAC_RULES = {
    **dict.fromkeys(("conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
                     "conv_transpose2d", "conv_transpose3d"), _conv),
    "linear": _linear,
    **dict.fromkeys(("mm", "bmm", "matmul", "addmm", "baddbmm"), _matmul),
    "scaled_dot_product_attention": _sdpa,
}


def macs_of(captured: Captured) -> int:
    """MACs of the captured graph, from node shapes."""
    total = 0
    for node in captured.graph.nodes:
        packet = getattr(node.target, "overloadpacket", None)
        rule = _MAC_RULES.get(getattr(packet, "__name__", ""))
        if rule is not None and node.op == "call_function":
            total += rule(node)
    return int(total)


def layer_costs(captured: Captured, model: nn.Module) -> list[tuple[str, str, int, int]]:
    """(module FQN, class name, parameters, MACs) per module that owns parameters or does MACs."""
    macs: dict[str, int] = {}
    kinds: dict[str, str] = {}
    for node in captured.graph.nodes:
        packet = getattr(node.target, "overloadpacket", None)
        rule = _MAC_RULES.get(getattr(packet, "__name__", ""))
        stack = node.meta.get("nn_module_stack") or {}
        if rule is not None and node.op == "call_function" and stack:
            fqn, cls = list(stack.values())[-1]
            macs[fqn] = macs.get(fqn, 0) + rule(node)
            kinds[fqn] = getattr(cls, "__name__", str(cls)).rsplit(".", 1)[-1]
    rows = []
    for fqn, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if own or fqn in macs:
            rows.append((fqn, kinds.get(fqn, type(module).__name__), own, macs.get(fqn, 0)))
    return rows


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """MACs of one forward pass of `model` on the example inputs.

    >>> import torch
    >>> count_macs(nn.Linear(4, 3), torch.randn(2, 4))
    24
    """
    return macs_of(capture(model, example_inputs))
