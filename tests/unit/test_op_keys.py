"""One way to name an op (structprune/ir/ops.py): `op_base` ("conv2d") and `op_key` ("aten.conv2d") for the
rule tables, the MAC counter and the rewrite of literal shapes; the MAC rules decide by the op's name, not by
substrings of it (a transposed convolution by its op or the `transposed` argument of `convolution`, the
bias operand of addmm/baddbmm by the op)."""
from __future__ import annotations

import math
import operator

import pytest
import torch
from torch import nn

import models_zoo
from structprune.capture import capture
from structprune.graph import cost
from structprune.graph.cost import MacCounter, macs_of
from structprune.ir.ops import op_base, op_key, op_packet
from structprune.rules import DEFAULT_RULES


@torch.library.custom_op("structprune_op_keys::fused_scale", mutates_args=())
def fused_scale(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@fused_scale.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@pytest.mark.parametrize("target, base, key", [
    (torch.ops.aten.conv2d.default, "conv2d", "aten.conv2d"),
    (torch.ops.aten.add.Tensor, "add", "aten.add"),
    (torch.ops.aten.add.out, "add", "aten.add"),
    (torch.ops.aten.add_.Tensor, "add_", "aten.add_"),
    (torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
     "_scaled_dot_product_flash_attention_for_cpu", "aten._scaled_dot_product_flash_attention_for_cpu"),
    (torch.ops.aten.conv2d, "conv2d", "aten.conv2d"),  # a packet names itself
    (torch.ops.structprune_op_keys.fused_scale.default, "fused_scale", "structprune_op_keys.fused_scale"),
    (operator.getitem, "", "getitem"),
    (math.prod, "", "prod"),
])
def test_op_base_and_op_key(target, base: str, key: str) -> None:
    assert (op_base(target), op_key(target)) == (base, key)


@pytest.mark.parametrize("name", ["resnet20", "bert", "shufflenet"])
def test_every_graph_op_is_named_as_the_rule_tables_always_named_it(name: str) -> None:
    """op_key keeps the strings of reasons, reports and golden files: namespace.name from the packet's
    qualified name; op_base is the name alone."""
    graph = capture(models_zoo.create(name).eval(), models_zoo.example_inputs(name)).graph
    for node in (n for n in graph.nodes if n.op == "call_function"):
        packet = op_packet(node.target)
        if packet is None:
            assert node.target is operator.getitem and op_key(node.target) == "getitem"
            continue
        assert op_key(node.target) == packet._qualified_op_name.replace("::", ".")
        assert op_key(node.target) == f"{node.target.namespace}.{op_base(node.target)}"
        assert op_base(node.target) == str(node.target).split(".")[1]


def test_every_table_key_names_a_real_op() -> None:
    """The MAC rules are keyed by op_base, each an aten op; the rule table's aten keys are op_keys (some
    name ops this torch build lacks, kept for others)."""
    for base in cost._MAC_RULES:
        assert op_base(getattr(torch.ops.aten, base)) == base
    aten = [k for k in DEFAULT_RULES if k.startswith("aten.") and hasattr(torch.ops.aten, k.removeprefix("aten."))]
    assert len(aten) > 200
    for key in aten:
        assert op_key(getattr(torch.ops.aten, key.removeprefix("aten."))) == key


class Products(nn.Module):
    """Transposed convolutions (graph: conv_transpose*d; run: convolution with transposed=True) and
    products with an added term (graph: linear, addmm, baddbmm; run: addmm, baddbmm)."""

    def __init__(self) -> None:
        super().__init__()
        self.up2, self.up1 = nn.ConvTranspose2d(4, 6, 3, stride=2), nn.ConvTranspose1d(3, 5, 2)
        self.fc = nn.Linear(8, 7)

    def forward(self, image, signal, rows):
        bias, batched = torch.zeros(2, 3, 3), torch.ones(2, 3, 4)
        return (self.up2(image).sum() + self.up1(signal).sum() + self.fc(rows).sum()
                + torch.addmm(rows[:, :7], rows, torch.ones(8, 7)).sum()
                + torch.baddbmm(bias, batched, torch.ones(2, 4, 3)).sum())


def test_transposed_convolutions_and_added_products_count_alike_in_graph_and_run() -> None:
    inputs = (torch.randn(1, 4, 5, 5), torch.randn(1, 3, 9), torch.randn(2, 8))
    up2 = 4 * 5 * 5 * 6 * 3 * 3  # transposed: every input element times out_channels x kernel
    up1 = 3 * 9 * 5 * 2
    fc = addmm = 2 * 7 * 8
    baddbmm = 2 * 3 * 3 * 4
    expected = up2 + up1 + fc + addmm + baddbmm
    assert expected == 5966
    assert macs_of(capture(Products(), inputs)) == expected
    with MacCounter() as counter, torch.no_grad():
        Products()(*inputs)
    assert counter.total == expected
