"""A rewrite that fails verification in some groups gives a verified, partly pruned model: the groups
verification localised are kept whole (with the reason), the rest stays pruned; `strict` fails instead."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import structprune
from structprune.errors import VerificationError


class Baked(nn.Module):
    """Reshapes its projection with a literal width, as code written for one size does."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.back = nn.Linear(16, 16), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.back(self.proj(x).reshape(x.shape[0], 4, 4).flip(-1).reshape(x.shape[0], 16))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.block, self.fc2, self.out = nn.Linear(8, 16), Baked(), nn.Linear(16, 32), nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc2(torch.relu(self.block(torch.relu(self.fc1(x)))))))


def _net() -> nn.Module:
    torch.manual_seed(0)
    return Net().eval()


def test_groups_inside_a_module_that_does_not_recapture_are_kept_whole() -> None:
    x = torch.randn(2, 8)
    result = structprune.compress(_net(), x, ratio=0.5)
    blocked = dict(result.plan.meta["blocked_by_verification"])
    assert set(blocked) == {"fc1.weight:0", "block.proj.weight:0", "block.back.weight:0"}
    assert set(blocked.values()) == {"verification_failed: re-capture failed in module 'block' (every Baked)"}
    rows = {row.id: row for row in result.report.groups}
    assert rows["fc2.weight:0"].kept == 16 and rows["fc1.weight:0"].kept == 16 and not rows["fc1.weight:0"].prunable
    assert result.report.verification["ok"] and result.report.params_after < result.report.params_before
    replayed = structprune.apply_plan(_net(), x, structprune.Plan.from_json(result.plan.to_json()))
    assert sum(p.numel() for p in replayed.parameters()) == result.report.params_after


def test_strict_fails_instead_of_replanning() -> None:
    with pytest.raises(VerificationError, match="re-capture|recapture"):
        structprune.compress(_net(), torch.randn(2, 8), ratio=0.5, strict=True)


class LeNet(nn.Module):
    """The classic script: a flatten written as a literal, `x.view(-1, 16 * 5 * 5)` or `x.view(B, 400)`."""

    def __init__(self, batch_in_view: bool) -> None:
        super().__init__()
        self.batch_in_view = batch_in_view
        self.conv1, self.conv2 = nn.Conv2d(1, 6, 5), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = x.view(x.shape[0], 16 * 5 * 5) if self.batch_in_view else x.view(-1, 16 * 5 * 5)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.mark.parametrize("batch_in_view, why", [
    (False, "verification_failed: re-capture failed in module 'fc1' (its input)"),  # fails in fc1: 400 != 200
    # in the root
    (True, "verification_failed: view to sizes that follow the pruned width: not so in the model's code"),
])
def test_a_literal_flatten_keeps_only_the_group_it_reads_whole(batch_in_view, why) -> None:
    torch.manual_seed(0)
    result = structprune.compress(LeNet(batch_in_view).eval(), torch.randn(2, 1, 32, 32), ratio=0.5)
    assert result.report.verification["ok"]
    assert result.plan.meta["blocked_by_verification"] == {"conv2.weight:0": why}
    model = result.model
    widths = (model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features, model.fc2.out_features)
    assert widths == (3, 16, 60, 42)


def test_a_pruned_model_that_fails_to_run_names_the_innermost_module_it_failed_in() -> None:
    """Where re-capture names no module below the root (torch.export's error can lose the frames),
    the failed forward still says where, so the groups there can be kept whole."""
    from structprune.verify.verify import _check_outputs

    net = Net().eval()
    net.block.back = nn.Linear(15, 16)  # what a stale width does: the block fails inside
    check, outputs, failed_in = _check_outputs([(2, 4)], net, torch.randn(2, 8))
    assert (check.name, check.ok, outputs, failed_in) == ("runs", False, None, "block.back")
    assert "mat1 and mat2 shapes cannot be multiplied" in check.detail
