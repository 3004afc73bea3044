"""Weight normalisation, legacy (`torch.nn.utils.weight_norm`, a pre-forward hook and a computed `weight`
attribute) and parametrized (`torch.nn.utils.parametrizations.weight_norm`): `g` and `v` lose the same
output channels, the next layer's `v` its input columns, and the pruned model keeps its weight norm."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm

import structprune
from helpers import group_with, outputs, refs

X = torch.randn(2, 4, 12, generator=torch.Generator().manual_seed(0))


class TCN(nn.Module):
    """Two weight-normed dilated convs (audio/TCN style) and a plain 1x1 head."""

    def __init__(self, legacy: bool, widths: tuple[int, int] = (16, 8)) -> None:
        super().__init__()
        norm = torch.nn.utils.weight_norm if legacy else torch.nn.utils.parametrizations.weight_norm
        self.a = norm(nn.Conv1d(4, widths[0], 3, padding=1))
        self.b = norm(nn.Conv1d(widths[0], widths[1], 3, padding=2, dilation=2))
        self.head = nn.Conv1d(widths[1], 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.b(torch.relu(self.a(x)))))


def _tcn(legacy: bool) -> nn.Module:
    torch.manual_seed(0)
    return TCN(legacy).eval()


def _names(legacy: bool, layer: str) -> tuple[str, str]:
    if legacy:
        return f"{layer}.weight_g", f"{layer}.weight_v"
    return f"{layer}.parametrizations.weight.original0", f"{layer}.parametrizations.weight.original1"


def _is_weight_normed(module: nn.Module, legacy: bool) -> bool:
    if legacy:
        return any(isinstance(h, WeightNorm) for h in module._forward_pre_hooks.values())
    return parametrize.is_parametrized(module, "weight")


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "parametrization"])
def test_g_and_v_are_one_group_with_the_bias_and_the_next_input(legacy: bool) -> None:
    graph = structprune.analyze(_tcn(legacy), X)
    g, v = _names(legacy, "a")
    group = group_with(graph, f"{v}:0")
    assert group.prunable and group.exact and group.size == 16
    assert refs(group) == {f"{g}:0", f"{v}:0", "a.bias:0", f"{_names(legacy, 'b')[1]}:1"}


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "parametrization"])
def test_weight_normed_model_is_pruned_verified_and_keeps_its_weight_norm(legacy: bool) -> None:
    model = _tcn(legacy)
    result = structprune.compress(model, X, ratio=0.5)
    pruned = result.model
    assert result.report.verification["ok"] and result.report.verification["masking_error"] < 1e-5
    assert result.report.params_after < result.report.params_before
    assert (pruned.a.out_channels, pruned.b.in_channels, pruned.b.out_channels, pruned.head.in_channels) == (8, 8, 4, 4)
    assert _is_weight_normed(pruned.a, legacy) and _is_weight_normed(pruned.b, legacy)
    g, v = (pruned.get_parameter(n) for n in _names(legacy, "b"))
    assert g.shape == (4, 1, 1) and v.shape == (4, 8, 3)
    torch.testing.assert_close(pruned.b.weight, torch._weight_norm(v, g, 0))
    assert outputs(pruned, X).shape == (2, 2, 12)
    assert _is_weight_normed(model.a, legacy) and model.a.weight.shape == (16, 4, 3)  # the user's model is untouched


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "parametrization"])
def test_pruned_state_dict_loads_into_a_rebuilt_pruned_model(legacy: bool) -> None:
    pruned = structprune.compress(_tcn(legacy), X, ratio=0.5).model
    rebuilt = TCN(legacy, widths=(8, 4)).eval()
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    torch.testing.assert_close(outputs(rebuilt, X), outputs(pruned, X))
    torch.testing.assert_close(outputs(copy.deepcopy(pruned), X), outputs(pruned, X))


def test_legacy_weight_attribute_follows_the_sliced_g_and_v_after_a_training_forward() -> None:
    pruned = structprune.compress(_tcn(True), X, ratio=0.5).model
    assert pruned.a.weight.is_leaf and pruned.a.weight.shape == (8, 4, 3)
    pruned.train()
    pruned(X).sum().backward()  # the hook recomputes `weight` from g and v, with gradients
    assert pruned.a.weight_v.grad.shape == (8, 4, 3) and pruned.a.weight_g.grad.shape == (8, 1, 1)
