"""Model size and cost: parameter count and multiply-accumulates (MACs) for one forward pass.

MACs come from one small rule table over the ops that carry essentially all the arithmetic —
convolutions, linear layers, matrix products, attention — counted the way torch's FlopCounterMode
counts them (FLOPs / 2). The table reads either a captured graph's shapes (`macs_of`, no forward
pass) or the ops of a forward that runs anyway (`MacCounter`). This is the cost model verification,
the report and `structprune inspect` share; `prunable_macs`/`prunable_section` say how much of it the
prunable groups of a ChannelGraph can shrink (the report's `prunable` section)."""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import fx, nn
from torch.utils._python_dispatch import TorchDispatchMode

from structprune.capture import Captured, capture


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (tied parameters counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _shape(value) -> tuple[int, ...]:
    """Shape of a graph value (an fx node, from its recorded fake value) or of a live tensor."""
    tensor = value.meta["val"] if isinstance(value, fx.Node) else value
    return tuple(int(s) for s in tensor.shape)


def _conv(target: str, args, out) -> int:
    w = _shape(args[1])
    transposed = "transpose" in target or ("convolution" in target and len(args) > 6 and bool(args[6]))
    if transposed:
        return math.prod(_shape(args[0])) * math.prod(w[1:])
    return math.prod(_shape(out)) * math.prod(w[1:])


def _linear(target: str, args, out) -> int:
    return math.prod(_shape(out)) * _shape(args[1])[-1]


def _matmul(target: str, args, out) -> int:
    a = args[1] if "add" in target else args[0]
    return math.prod(_shape(out)) * _shape(a)[-1]


def _sdpa(target: str, args, out) -> int:
    q, k, v = (_shape(a) for a in args[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


# Keyed by op name: the export graph's ops (conv2d, linear, scaled_dot_product_attention) and, for
# MACs counted on a running forward, the ops they dispatch to (convolution, addmm, fused attention).
_MAC_RULES = {
    **dict.fromkeys(("conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
                     "conv_transpose2d", "conv_transpose3d"), _conv),
    "linear": _linear,
    **dict.fromkeys(("mm", "bmm", "matmul", "addmm", "baddbmm"), _matmul),
    **dict.fromkeys(("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
                     "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                     "_scaled_dot_product_cudnn_attention"), _sdpa),
}


def _node_macs(node: fx.Node) -> int:
    packet = getattr(node.target, "overloadpacket", None)
    rule = _MAC_RULES.get(getattr(packet, "__name__", ""))
    return rule(str(node.target), node.args, node) if rule is not None and node.op == "call_function" else 0


def macs_of(captured: Captured) -> int:
    """MACs of the captured graph, from node shapes."""
    return int(sum(_node_macs(node) for node in captured.graph.nodes))


class MacCounter(TorchDispatchMode):
    """MACs of the ops that run inside the block, by the same rules as `macs_of` (which reads a
    captured graph instead): lets a forward that runs anyway count its cost without a capture.

    >>> import torch
    >>> with MacCounter() as counter, torch.no_grad():
    ...     _ = nn.Linear(4, 3)(torch.randn(2, 4))
    >>> counter.total
    24
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        rule = _MAC_RULES.get(func.overloadpacket.__name__)
        if rule is not None:
            self.total += rule(str(func), args, out)
        return out


def layer_costs(captured: Captured, model: nn.Module) -> list[tuple[str, str, int, int]]:
    """(module FQN, class name, parameters, MACs) per module that owns parameters or does MACs."""
    macs: dict[str, int] = {}
    kinds: dict[str, str] = {}
    for node in captured.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        cost = _node_macs(node)
        if cost and stack:
            fqn, cls = list(stack.values())[-1]
            macs[fqn] = macs.get(fqn, 0) + cost
            kinds[fqn] = getattr(cls, "__name__", str(cls)).rsplit(".", 1)[-1]
    rows = []
    for fqn, module in model.named_modules():
        own = sum(p.numel() for p in module.parameters(recurse=False))
        if own or fqn in macs:
            rows.append((fqn, kinds.get(fqn, type(module).__name__), own, macs.get(fqn, 0)))
    return rows


@dataclass(frozen=True)
class PrunableMacs:
    """Of one captured model's MACs (`total`, as `macs_of` counts them), those pruning can shrink."""

    prunable: int
    total: int

    @property
    def share(self) -> float | None:
        """prunable / total; None for a model without MACs (nothing to share)."""
        return self.prunable / self.total if self.total else None


def prunable_macs(graph, prunable_ids: Iterable[str] | None = None) -> PrunableMacs:
    """The MACs that pruning can shrink: those of each MAC op (convolution, linear, matrix product,
    attention; `macs_of`'s rules) whose result or one of whose tensor operands has a channel axis
    holding a channel of a prunable group. Such an op loses MACs when that group loses channels, on
    its input side, its output side or both; an op that touches only blocked groups costs the same at
    every ratio. An op counts whole, whichever share of its channels is prunable.

    `graph` is a ChannelGraph (its groups, abstract values and component array are read);
    `prunable_ids` are the groups counted as prunable (default: those the analysis found prunable;
    a report passes the ones verification did not block). Groups a user ignores still count.

    >>> import torch
    >>> from structprune.api import analyze
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> prunable_macs(analyze(net, torch.randn(1, 4)))
    PrunableMacs(prunable=48, total=48)
    """
    ids = {g.id for g in graph.prunable} if prunable_ids is None else set(prunable_ids)
    chosen = [g.components for g in graph.groups if g.id in ids]
    is_prunable = np.zeros(int(graph.component.max(initial=0)) + 1, dtype=bool)
    if chosen:
        is_prunable[np.concatenate(chosen)] = True
    prunable = total = 0
    for node in graph.captured.graph.nodes:
        macs = _node_macs(node)
        total += macs
        if macs and _touches(graph, node, is_prunable):
            prunable += macs
    return PrunableMacs(int(prunable), int(total))


def _touches(graph, node: fx.Node, is_prunable: np.ndarray) -> bool:
    """Does the node's result or one of its tensor inputs carry a channel of a prunable component?"""
    for name in [node.name, *(a.name for a in node.all_input_nodes)]:
        value = graph.values.get(name)
        if any(getattr(value, "chan", ())) and is_prunable[graph.component[value.ids]].any():
            return True
    return False


def count_macs(model: nn.Module, example_inputs: Any) -> int:
    """MACs of one forward pass of `model` on the example inputs.

    >>> import torch
    >>> count_macs(nn.Linear(4, 3), torch.randn(2, 4))
    24
    """
    return macs_of(capture(model, example_inputs))


def prunable_section(graph, prunable_ids: Iterable[str] | None = None) -> dict:
    """The report's `prunable` section for a ChannelGraph: prunable groups, their channels and the MACs
    of the ops touching them, each with its total and share (SCHEMA.md). `prunable_ids`: the groups
    counted as prunable (default: the analysis's; a report leaves out those verification blocked).

    >>> import torch
    >>> from torch import nn
    >>> from structprune.api import analyze
    >>> graph = analyze(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), torch.randn(1, 4))
    >>> prunable_section(graph)["channel_share"], prunable_section(graph)["macs_share"]
    (0.5714, 1.0)
    """
    ids = {g.id for g in graph.prunable} if prunable_ids is None else set(prunable_ids)
    chosen = [g for g in graph.groups if g.id in ids]
    channels, all_channels = sum(g.size for g in chosen), sum(g.size for g in graph.groups)
    macs = prunable_macs(graph, ids)
    return {"groups": len(chosen), "groups_total": len(graph.groups),
            "channels": channels, "channels_total": all_channels, "channel_share": _share(channels, all_channels),
            "macs": macs.prunable, "macs_total": macs.total, "macs_share": _share(macs.prunable, macs.total)}


def group_dicts(graph) -> list[dict]:
    """A ChannelGraph's groups as report rows (id, size, kept, prunable, why), nothing pruned: what
    `group_lines` reads when there is no report (`structprune inspect`)."""
    return [{"id": g.id, "size": g.size, "kept": g.size, "prunable": g.prunable,
             "why": "; ".join(sorted({str(r) for r in g.reasons}))} for g in graph.groups]


def _share(part: int, total: int) -> float | None:
    return round(part / total, 4) if total else None
