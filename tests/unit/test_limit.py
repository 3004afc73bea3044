"""The pruning-limit estimate (structprune.limit) on models with a known answer: exactly k of n channels
carry the signal (each one is needed for one class), the other n - k have tiny weights and feed nothing,
so the limit is (n - k) / n of the channels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from structprune.api import analyze
from structprune.errors import UsageError
from structprune.limit import Spectrum, channel_gates, estimate_pruning_limit, squared_width
from structprune.limit.spectrum import exact_spectrum, lanczos_spectrum


def signal_mlp(n: int, k: int, seed: int = 0) -> nn.Sequential:
    """Hidden units `perm[:k]` copy input c (x4) to class c (x4); the rest read noise (x0.01), feed nothing."""
    gen = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(k, n), nn.ReLU(), nn.Linear(n, k))
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(n, k, generator=gen) * 0.01)
        for p in (net[0].bias, net[2].weight, net[2].bias):
            p.zero_()
        for c, unit in enumerate(torch.randperm(n, generator=gen)[:k].tolist()):
            net[0].weight[unit] = 0.0
            net[0].weight[unit, c] = 4.0
            net[2].weight[c, unit] = 4.0
    return net


class SignalConv(nn.Module):
    """conv1x1 -> BatchNorm -> ReLU -> mean pool -> Linear; k of n conv channels carry one class each."""

    def __init__(self, n: int, k: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(k, n, 1, bias=False)
        self.bn = nn.BatchNorm2d(n)
        self.fc = nn.Linear(n, k)
        mlp = signal_mlp(n, k, seed=1)
        with torch.no_grad():
            self.conv.weight.copy_(mlp[0].weight[:, :, None, None])
            self.fc.weight.copy_(mlp[2].weight)
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def labelled(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> DataLoader:
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


@pytest.mark.parametrize("n,k", [(8, 2), (8, 3), (8, 5), (12, 4)])
def test_the_limit_is_the_share_of_channels_that_carry_no_signal(n: int, k: int) -> None:
    net = signal_mlp(n, k)
    x = torch.randn(2048, k, generator=torch.Generator().manual_seed(2))
    limit = estimate_pruning_limit(net, x[:1], labelled(net, x))
    assert limit.channel_fraction == pytest.approx((n - k) / n)
    assert limit.method == "exact" and limit.channels == n
    # one step past the limit the squared width falls below the fraction, well short of it
    step = round(limit.channel_fraction * n) + 1
    assert limit.widths[step] < limit.fractions[step] - 0.5 / n


def test_lanczos_quadrature_finds_the_same_limit_when_the_channels_outnumber_its_steps() -> None:
    n, k = 12, 4
    net = signal_mlp(n, k)
    x = torch.randn(2048, k, generator=torch.Generator().manual_seed(2))
    limit = estimate_pruning_limit(net, x[:1], labelled(net, x), steps=6, probes=4)
    assert limit.method == "lanczos"
    assert limit.channel_fraction == pytest.approx((n - k) / n)


def test_gates_follow_a_channel_through_conv_batchnorm_and_the_next_layer() -> None:
    n, k = 8, 3
    net = SignalConv(n, k).eval()
    x = torch.randn(1024, k, 2, 2, generator=torch.Generator().manual_seed(3))
    graph = analyze(net, x[:1])
    gates = channel_gates(graph, net)
    assert gates.n == n and sorted(gates.axes) == ["bn.bias", "bn.weight", "conv.weight", "fc.weight"]
    limit = estimate_pruning_limit(net, x[:1], labelled(net, x), graph=graph)
    assert limit.channel_fraction == pytest.approx((n - k) / n)
    # removing the free channels costs nothing: MACs and params shrink, but far less than 8x
    assert 1.0 < limit.macs_reduction < n / k + 1e-9 and limit.params_reduction > 1.0


def test_a_gate_at_zero_removes_the_channel_exactly_as_slicing_it_out() -> None:
    net = signal_mlp(6, 2, seed=4)
    x = torch.randn(16, 2)
    gates = channel_gates(analyze(net, x[:1]), net)
    g = torch.ones(gates.n)
    g[[1, 4]] = 0.0
    gated = torch.func.functional_call(net, gates.parameters(net, g), (x,))
    keep = [0, 2, 3, 5]
    sliced = nn.functional.linear(torch.relu(nn.functional.linear(x, net[0].weight[keep], net[0].bias[keep])),
                                  net[2].weight[:, keep], net[2].bias)
    torch.testing.assert_close(gated, sliced)
    owned = torch.cat([net[0].weight[1], net[2].weight[:, 1]]).detach()
    assert gates.magnitude[1] == pytest.approx(float(owned.norm()))


def test_every_channel_carrying_signal_leaves_almost_nothing_to_prune() -> None:
    n = 6
    net = signal_mlp(n, n)
    x = torch.randn(2048, n, generator=torch.Generator().manual_seed(5))
    assert estimate_pruning_limit(net, x[:1], labelled(net, x)).channel_fraction <= 1 / n


def test_squared_width_counts_flat_directions_whole_and_sharp_ones_by_their_radius() -> None:
    spectrum = Spectrum(np.array([0.0, 2.0, -2.0, 200.0]), np.full(4, 0.25), "exact")
    widths = squared_width(spectrum, tolerance=1.0, radius=np.array([0.0, 1.0, 10.0]))
    # r^2 = 2 eps / |theta| = 1, 1, 0.01: at R = 1 the shares are 1, 1/2, 1/2, 0.01/1.01
    np.testing.assert_allclose(widths, [1.0, 0.25 * (1 + 0.5 + 0.5 + 0.01 / 1.01),
                                        0.25 * (1 + 2 / 101 + 0.01 / 100.01)], rtol=1e-9)
    assert np.all(np.diff(widths) < 0)


def test_lanczos_quadrature_matches_the_exact_spectrum_moments() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 30))
    matrix = a @ a.T
    exact = exact_spectrum(matrix)
    sq = lanczos_spectrum(lambda v: matrix @ v, 30, 30, probes=8)
    for power in (1, 2):  # tr(A^p)/n is estimated without bias by the quadrature
        assert float(sq.weights @ sq.nodes ** power) == pytest.approx(float(exact.weights @ exact.nodes ** power),
                                                                       rel=0.25)


def test_a_model_without_prunable_channels_is_a_one_line_error() -> None:
    net = nn.Linear(3, 2)
    x = torch.randn(8, 3)
    with pytest.raises(UsageError, match="no prunable channel groups"):
        estimate_pruning_limit(net, x[:1], labelled(net, x))
