"""Weight standardisation (timm's ScaledStdConv2d, NFNets): the conv weight is viewed as
`(1, out, in*k*k)`, standardised by `batch_norm` over each output channel's fan-in (with a per-channel
gain as the affine weight) and viewed back. The output channels, the gain and the bias are one group
with the next layer's inputs; the input channels run through the merged `in*k*k` dim and are followed
there (inexact: the fan-in statistics change when inputs go)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import structprune
from helpers import group_with, refs
from structprune.rules.weights import Axis, view_axis

X = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))


class StdConv(nn.Conv2d):
    """A conv whose weight is standardised per output channel in its forward (ScaledStdConv2d's shape)."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__(cin, cout, k, padding=k // 2)
        self.scale = self.weight[0].numel() ** -0.5
        self.gain = nn.Parameter(torch.rand(cout, 1, 1, 1) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None,
                         weight=(self.gain * self.scale).view(-1), training=True, momentum=0.0, eps=1e-6)
        return F.conv2d(x, w.reshape_as(self.weight), self.bias, self.stride, self.padding)


class StdNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = StdConv(3, 16, 3), StdConv(16, 32, 3), StdConv(32, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.b(F.gelu(self.a(x)))))


def _net() -> StdNet:
    torch.manual_seed(0)
    return StdNet().eval()


def test_view_axis_follows_a_run_across_merged_dims() -> None:
    assert view_axis((16, 3, 3, 3), (1, 16, 27), Axis(1, 1, 16)) == Axis(0, 1, 16)
    assert view_axis((1, 16, 27), (16, 3, 3, 3), Axis(1, 1, 3)) == Axis(2, 9, 3)
    assert view_axis((16, 3, 3, 3), (1, 16, 27), Axis(2, 1, 27)) is None  # in*k*k is no parameter axis


def test_standardised_conv_is_one_group_with_its_gain_bias_and_the_next_input() -> None:
    graph = structprune.analyze(_net(), X)
    group = group_with(graph, "a.weight:0")
    assert refs(group) == {"a.weight:0", "a.gain:0", "a.bias:0", "b.weight:1"}
    assert group.prunable and group.size == 16
    assert not group.exact  # b's fan-in statistics change with its inputs
    assert group_with(graph, "b.weight:0").prunable and group_with(graph, "b.weight:0").size == 32


def test_standardised_convs_are_pruned_and_verified() -> None:
    result = structprune.compress(_net(), X, ratio=0.5)
    assert result.report.verification["ok"]
    assert result.model.a.out_channels == 8 and result.model.b.weight.shape == (16, 8, 3, 3)
    assert result.model.b.gain.shape == (16, 1, 1, 1)
    assert result.report.params_before / result.report.params_after > 3.0
    assert result.model(X).shape == (1, 4, 8, 8)
