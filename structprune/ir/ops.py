"""Op names, computed one way for every stage: the rule tables, the MAC counter and the rewrite of
literal shapes all name an fx node's target (or a dispatched op) through these two functions.

`op_base` is the overload packet's bare name ("conv2d" for `torch.ops.aten.conv2d.default`), what a
table of aten ops keys on; `op_key` qualifies it with its namespace ("aten.conv2d"), the key of the
rule tables and the op named in reasons and reports. Every overload of an op shares both (`add.Tensor`,
`add.out`); an in-place op is its own op (`aten.add_`).

>>> import operator, torch
>>> op_base(torch.ops.aten.conv2d.default), op_key(torch.ops.aten.conv2d.default)
('conv2d', 'aten.conv2d')
>>> op_base(torch.ops.aten.add_.Tensor), op_key(torch.ops.aten.add_.Tensor)
('add_', 'aten.add_')
>>> op_key(torch.ops.aten.add.out) == op_key(torch.ops.aten.add) == "aten.add"
True
>>> op_base(operator.getitem), op_key(operator.getitem)
('', 'getitem')
"""
from __future__ import annotations

from structprune.compat import OpOverloadPacket


def op_packet(target) -> OpOverloadPacket | None:
    """The overload packet of an op overload (`torch.ops.aten.conv2d.default` -> `torch.ops.aten.conv2d`),
    the packet itself when given one, and None for anything else (getitem, a Python function)."""
    return target if isinstance(target, OpOverloadPacket) else getattr(target, "overloadpacket", None)


def op_base(target) -> str:
    """The op's bare name ("conv2d", "addmm", "_scaled_dot_product_flash_attention_for_cpu"); "" when
    `target` is not a torch op (getitem, a Python function, a higher-order op)."""
    return getattr(op_packet(target), "__name__", "")


def op_key(target) -> str:
    """The op's qualified name, "namespace.name" ("aten.conv2d", "mylib.fused_scale"); for a target that
    is not a torch op, its `__name__` ("getitem") or, failing that, its str."""
    packet = op_packet(target)
    if packet is not None:
        return str(packet)  # "{namespace}.{name}"
    return getattr(target, "__name__", str(target))
