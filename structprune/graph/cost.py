"""Model size and cost: parameter count and multiply-accumulates (MACs) for one forward pass.

MACs come from one small rule table over the ops that carry essentially all the arithmetic —
convolutions, linear layers, matrix products, attention — counted the way torch's FlopCounterMode
counts them (FLOPs / 2), keyed by the op's bare name (`ir.ops.op_base`). The table reads either a
captured graph's shapes (`macs_of`, no forward pass) or the ops of a forward that runs anyway
(`MacCounter`). This is the cost model verification, the report and `structprune inspect` share;
`prunable_macs`/`prunable_section` say how much of it the prunable groups of a ChannelGraph can shrink
(the report's `prunable` section).

An op the table does not know counts 0, which is right for the many ops without arithmetic worth
counting (views, element-wise ops, norms) but wrong for one torch's own FLOP counter has a formula for
(`torch.utils.flop_counter`, extended with `register_flop_formula`): such *uncounted* ops are named, by
`uncounted_ops` for a graph and `MacCounter.uncounted` for a forward, and listed in the report."""
from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import fx, nn
from torch.utils.flop_counter import FlopCounterMode

from structprune.capture import Captured, capture
from structprune.compat import TorchDispatchMode
from structprune.ir.ops import op_base, op_key, op_packet


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (tied parameters counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def _shape(value) -> tuple[int, ...]:
    """Shape of a graph value (an fx node, from its recorded fake value) or of a live tensor."""
    tensor = value.meta["val"] if isinstance(value, fx.Node) else value
    return tuple(int(s) for s in tensor.shape)


_CONV_TRANSPOSE = ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")
_CONV_GENERIC = ("convolution", "_convolution")  # (input, weight, bias, stride, padding, dilation, transposed, ..)
_ADD_MATMUL = ("addmm", "baddbmm")  # (self, a, b): the product's operands come second and third


def _conv(op: str, args, out) -> int:
    w = _shape(args[1])
    transposed = op in _CONV_TRANSPOSE or (op in _CONV_GENERIC and len(args) > 6 and bool(args[6]))
    if transposed:
        return math.prod(_shape(args[0])) * math.prod(w[1:])
    return math.prod(_shape(out)) * math.prod(w[1:])


def _linear(op: str, args, out) -> int:
    return math.prod(_shape(out)) * _shape(args[1])[-1]


def _matmul(op: str, args, out) -> int:
    a = args[1] if op in _ADD_MATMUL else args[0]
    return math.prod(_shape(out)) * _shape(a)[-1]


def _sdpa(op: str, args, out) -> int:
    q, k, v = (_shape(a) for a in args[:3])
    return math.prod(q[:-1]) * k[-2] * (q[-1] + v[-1])


# Keyed by op_base: the export graph's ops (conv2d, linear, scaled_dot_product_attention) and, for
# MACs counted on a running forward, the ops they dispatch to (convolution, addmm, fused attention).
# Each rule is called as rule(op_base, args, out).
_MAC_RULES = {
    **dict.fromkeys(("conv1d", "conv2d", "conv3d", *_CONV_GENERIC, *_CONV_TRANSPOSE), _conv),
    "linear": _linear,
    **dict.fromkeys(("mm", "bmm", "matmul", *_ADD_MATMUL), _matmul),
    **dict.fromkeys(("scaled_dot_product_attention", "_scaled_dot_product_flash_attention_for_cpu",
                     "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                     "_scaled_dot_product_cudnn_attention"), _sdpa),
}


def _node_macs(node: fx.Node) -> int:
    op = op_base(node.target)
    rule = _MAC_RULES.get(op)
    return rule(op, node.args, node) if rule is not None and node.op == "call_function" else 0


def macs_of(captured: Captured) -> int:
    """MACs of the captured graph, from node shapes."""
    return int(sum(_node_macs(node) for node in captured.graph.nodes))


def flop_counted_ops() -> frozenset:
    """The ops torch's FlopCounterMode has a FLOP formula for (its packets and higher-order ops), read
    each time so formulas registered with `torch.utils.flop_counter.register_flop_formula` count."""
    return frozenset(FlopCounterMode().flop_registry)


def is_uncounted(target, flop_ops: frozenset) -> bool:
    """Does `target` do arithmetic torch's FLOP counter counts (it is in `flop_ops`) that our MAC rules
    leave out (counted as 0)?"""
    packet = op_packet(target)
    return (target if packet is None else packet) in flop_ops and op_base(target) not in _MAC_RULES


def uncounted_ops(captured: Captured) -> tuple[str, ...]:
    """Op keys ("aten._slow_conv2d_forward") of the captured graph's ops whose arithmetic `macs_of` leaves
    out (`is_uncounted`), sorted; empty when the MACs count every op torch's FLOP counter would.

    >>> import torch
    >>> uncounted_ops(capture(nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)))
    ()
    """
    flop_ops = flop_counted_ops()
    return tuple(sorted({op_key(node.target) for node in captured.graph.nodes
                         if node.op == "call_function" and is_uncounted(node.target, flop_ops)}))


class MacCounter(TorchDispatchMode):
    """MACs of the ops that run inside the block, by the same rules as `macs_of` (which reads a
    captured graph instead): lets a forward that runs anyway count its cost without a capture.

    >>> import torch
    >>> with MacCounter() as counter, torch.no_grad():
    ...     _ = nn.Linear(4, 3)(torch.randn(2, 4))
    >>> counter.total, counter.uncounted
    (24, ())

    `uncounted`: the op keys of the ops that ran and whose arithmetic `total` leaves out (`is_uncounted`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self._uncounted: set[str] = set()
        self._flop_ops = flop_counted_ops()

    @property
    def uncounted(self) -> tuple[str, ...]:
        return tuple(sorted(self._uncounted))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        op = op_base(func)
        rule = _MAC_RULES.get(op)
        if rule is not None:
            self.total += rule(op, args, out)
        elif is_uncounted(func, self._flop_ops):
            self._uncounted.add(op_key(func))
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

    A graph with ops whose arithmetic the MACs leave out (`uncounted_ops`) adds them as `uncounted_ops`
    (a list of op keys) and warns once, naming them; the key is absent otherwise.
    """
    ids = {g.id for g in graph.prunable} if prunable_ids is None else set(prunable_ids)
    chosen = [g for g in graph.groups if g.id in ids]
    channels, all_channels = sum(g.size for g in chosen), sum(g.size for g in graph.groups)
    macs = prunable_macs(graph, ids)
    section = {"groups": len(chosen), "groups_total": len(graph.groups),
               "channels": channels, "channels_total": all_channels,
               "channel_share": _share(channels, all_channels),
               "macs": macs.prunable, "macs_total": macs.total, "macs_share": _share(macs.prunable, macs.total)}
    uncounted = uncounted_ops(graph.captured)
    if uncounted:
        warnings.warn(f"MAC counts leave out {', '.join(uncounted)}: torch's FLOP counter counts arithmetic "
                      "there that structprune's MAC rules do not (listed in report.json as "
                      "prunable.uncounted_ops)", UserWarning, stacklevel=2)
        section["uncounted_ops"] = list(uncounted)
    return section


def group_dicts(graph) -> list[dict]:
    """A ChannelGraph's groups as report rows (id, size, kept, prunable, why), nothing pruned: what
    `group_lines` reads when there is no report (`structprune inspect`)."""
    return [{"id": g.id, "size": g.size, "kept": g.size, "prunable": g.prunable,
             "why": "; ".join(sorted({str(r) for r in g.reasons}))} for g in graph.groups]


def _share(part: int, total: int) -> float | None:
    return round(part / total, 4) if total else None
