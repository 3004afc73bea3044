"""Convolutions whose input carries channels on a spatial dim. CoaT aggregates the class tokens of three
scales with `Conv1d(3, 1, 1)` over [B, 3, C]: a kernel of 1 reads each of the C positions alone, so the
channels pass through to the classifier (before, they were dropped there, the classifier's inputs were
cut loose from the width, verification failed and coat_tiny kept its residual whole: 1.31x -> 2.75x).
ECA slides `Conv1d(1, 1, 3)` over [B, 1, C]: neighbours mix, so those channels are blocked with a reason
(before, they collapsed into one prunable id)."""
from __future__ import annotations

import torch
from torch import nn

import structprune
from helpers import group_with, reason_kinds
from structprune.ir.reasons import ReasonKind


class Aggregate(nn.Module):
    """Three token streams of width C, their first tokens mixed by a pointwise Conv1d, then a head."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.streams = nn.ModuleList(nn.Linear(6, width) for _ in range(3))
        self.aggregate = nn.Conv1d(3, 1, 1)
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([s(x)[:, :1] for s in self.streams], dim=1)  # [B, 3, C]
        return self.head(self.aggregate(tokens).squeeze(1))


class Eca(nn.Module):
    """A conv, channel attention by a 3-wide Conv1d over the pooled channels, then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.eca, self.head = nn.Conv2d(3, 16, 3), nn.Conv1d(1, 1, 3, padding=1), nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        gate = self.eca(y.mean((2, 3)).view(y.shape[0], 1, -1)).sigmoid().view(y.shape[0], -1, 1, 1)
        return self.head(y * gate)


def test_pointwise_conv_passes_channels_on_its_length_dim_to_the_head() -> None:
    torch.manual_seed(0)
    graph = structprune.analyze(Aggregate().eval(), torch.randn(2, 5, 6))
    group = group_with(graph, "head.weight:1")
    assert group.prunable and group.size == 16
    assert {f"streams.{i}.weight:0" for i in range(3)} <= {m.ref for m in group.members}


def test_pointwise_aggregate_is_pruned_and_verified() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 5, 6)
    result = structprune.compress(Aggregate().eval(), x, ratio=0.5)
    assert result.report.verification["ok"] and "blocked_by_verification" not in result.plan.meta
    assert result.model.head.in_features == 8 and result.model.streams[0].out_features == 8


def test_a_kernel_sliding_over_channels_blocks_them_with_a_reason() -> None:
    torch.manual_seed(0)
    graph = structprune.analyze(Eca().eval(), torch.randn(1, 3, 8, 8))
    group = group_with(graph, "conv.weight:0")
    assert not group.prunable and group.size == 16
    assert ReasonKind.DATA_DIMENSION in reason_kinds(group)
    assert any("slides its kernel" in str(r) for r in group.reasons)
