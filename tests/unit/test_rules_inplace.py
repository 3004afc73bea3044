"""In-place ops (`out += identity`, `ReLU(inplace=True)`, ...) move channels exactly as their
functional forms: the rule table has every in-place variant that torch defines."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import structprune
from structprune.rules import DEFAULT_RULES, op_key


def test_every_functional_rule_has_its_inplace_variant() -> None:
    missing = [f"{key}_" for key in DEFAULT_RULES
               if key.startswith("aten.") and not key.endswith("_")
               and isinstance(getattr(torch.ops.aten, f"{key[5:]}_", None), torch._ops.OpOverloadPacket)
               and f"{key}_" not in DEFAULT_RULES]
    assert missing == []
    assert DEFAULT_RULES["aten.add_"] is DEFAULT_RULES["aten.add"]


def test_out_variants_share_the_functional_key() -> None:
    assert op_key(torch.ops.aten.add.out) == op_key(torch.ops.aten.add.Tensor) == "aten.add"
    assert op_key(torch.ops.aten.add_.Tensor) == "aten.add_"


class Block(nn.Module):
    """A torchvision-style residual block; `inplace` picks `out += identity` and in-place activations."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.inplace = inplace
        self.conv1, self.bn1 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.act = nn.LeakyReLU(0.1, inplace=inplace)
        self.drop = nn.Dropout(0.1, inplace=inplace)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.drop(self.act(self.bn1(self.conv1(x))))))
        if self.inplace:
            out += x
            return torch.relu_(out)
        return torch.relu(out + x)


def _net(inplace: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(inplace=inplace), Block(inplace), Block(inplace),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


@pytest.mark.parametrize("ratio", [0.3, 0.5])
def test_inplace_residual_prunes_like_the_functional_one(ratio: float) -> None:
    x = torch.randn(2, 3, 8, 8)
    inplace, functional = (structprune.compress(_net(flag), x, ratio=ratio) for flag in (True, False))
    assert [g.size for g in inplace.graph.prunable] == [g.size for g in functional.graph.prunable]
    assert len(inplace.graph.prunable) == 3  # the residual stream and each block's inner width
    assert inplace.report.verification["ok"]
    assert inplace.report.params_after == functional.report.params_after < inplace.report.params_before
    assert dict(inplace.plan.keep) == dict(functional.plan.keep)
