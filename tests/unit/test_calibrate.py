"""Calibration after a rewrite: BatchNorm recalibration, least-squares reconstruction, channel
scales, and the hook context managers (always removed)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import structprune
from structprune.calibrate import apply_channel_scales, recalibrate_batchnorm, reconstruct
from structprune.data.batches import calibration_batches
from structprune.data.running import forward_hooks, run_until
from structprune.errors import UsageError
from structprune.selection import Plan


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_recalibration_reestimates_running_statistics_and_restores_modes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    net[1].momentum = 0.3
    x = torch.randn(64, 2, 6, 6) * 2 + 1
    data = [(x[i:i + 16], None) for i in range(0, 64, 16)]
    assert recalibrate_batchnorm(net, data) == 1
    pre = net[0](x).detach()
    torch.testing.assert_close(net[1].running_mean, pre.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-5)
    batch_vars = torch.stack([pre[i:i + 16].var(dim=(0, 2, 3)) for i in range(0, 64, 16)]).mean(0)
    torch.testing.assert_close(net[1].running_var, batch_vars, rtol=1e-4, atol=1e-5)
    assert not net.training and not net[1].training and net[1].momentum == 0.3


def test_recalibration_without_data_fails_clearly():
    with pytest.raises(UsageError, match="needs calibration data"):
        recalibrate_batchnorm(nn.Sequential(nn.BatchNorm1d(3)), None)


def _redundant_mlp():
    """Hidden units 3..5 are 2x units 0..2 (ReLU is positively homogeneous), unit 6 is a constant
    (zero weights, bias 1.5): every dropped unit is a linear combination of kept units and 1."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 4)).eval()
    with torch.no_grad():
        net[0].weight[3:6] = 2 * net[0].weight[0:3]
        net[0].bias[3:6] = 2 * net[0].bias[0:3]
        net[0].weight[6] = 0
        net[0].bias[6] = 1.5
    return net


def test_reconstruction_is_exact_when_dropped_channels_are_combinations_of_kept_ones():
    net = _redundant_mlp()
    x = torch.randn(256, 5)
    graph = structprune.analyze(net, x[:2])
    plan = Plan({"0.weight:0": (0, 1, 2)}, {"0.weight:0": 7})
    pruned = structprune.apply_plan(net, x[:2], plan, graph=graph)
    assert (pruned(x) - net(x)).abs().max() > 0.1  # plain pruning is lossy here
    report = reconstruct(net, pruned, graph, plan, [(x[:128], None), (x[128:], None)], ridge=0.0)
    torch.testing.assert_close(pruned(x), net(x), rtol=1e-4, atol=1e-4)
    assert report.layers[0].error_after < 1e-8 < report.layers[0].error_before


def test_reconstruction_is_exact_for_a_convolutional_consumer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 6, 1), nn.ReLU(), nn.Conv2d(6, 3, 3, padding=1)).eval()
    with torch.no_grad():
        net[0].weight[3:] = 0.5 * net[0].weight[:3]
        net[0].bias[3:] = 0.5 * net[0].bias[:3]
    x = torch.randn(32, 2, 5, 5)
    graph = structprune.analyze(net, x[:2])
    plan = Plan({"0.weight:0": (0, 1, 2)}, {"0.weight:0": 6})
    pruned = structprune.apply_plan(net, x[:2], plan, graph=graph)
    reconstruct(net, pruned, graph, plan, [(x, None)], ridge=0.0)
    torch.testing.assert_close(pruned(x), net(x), rtol=1e-4, atol=1e-4)


def test_reconstruction_never_increases_the_calibration_error():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8),
                        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 5)).eval()
    x = torch.randn(64, 3, 8, 8)
    graph = structprune.analyze(net, x[:2])
    plan = Plan({"0.weight:0": (0, 2, 4, 6), "3.weight:0": (1, 2, 3)}, {g.id: g.size for g in graph.groups})
    pruned = structprune.apply_plan(net, x[:2], plan, graph=graph)
    report = reconstruct(net, pruned, graph, plan, [(x, None)])
    assert {f.name for f in report.layers} == {"3", "7"}
    assert all(f.error_after <= f.error_before for f in report.layers)
    assert report.layers[0].name == "3"  # forward order


def test_channel_scales_multiply_the_kept_consumer_columns():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    graph = structprune.analyze(net, torch.randn(2, 3))
    plan = Plan({"0.weight:0": (1, 3)}, {"0.weight:0": 4}, {"channel_scales": {"0.weight:0": [2.0, 0.5]}})
    pruned = structprune.apply_plan(net, torch.randn(2, 3), plan, graph=graph)
    before = pruned[2].weight.detach().clone()
    assert apply_channel_scales(pruned, graph, plan) == 1
    torch.testing.assert_close(pruned[2].weight, before * torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(pruned[0].weight, net[0].weight[[1, 3]])  # producer rows unchanged


def test_hooks_are_removed_even_when_the_forward_pass_fails():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())

    def boom(module, args):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with forward_hooks(net, pre={"0": boom}, post={"1": lambda m, a, o: None}):
            net(torch.randn(1, 3))
    assert not net[0]._forward_pre_hooks and not net[1]._forward_hooks
    x = torch.randn(2, 3)
    torch.testing.assert_close(run_until(net, x, "1"), net[0](x))
    assert not net[1]._forward_pre_hooks


def test_calibration_batches_stop_at_the_sample_budget_and_accept_bare_inputs():
    loader = [torch.randn(5, 2), torch.randn(5, 2), torch.randn(5, 2)]
    batches = list(calibration_batches(loader, 7, torch.device("cpu")))
    assert [b.size for b in batches] == [5, 2] and batches[0].y is None
    with pytest.raises(ValueError, match="labelled"):
        list(calibration_batches(loader, None, torch.device("cpu"), need_labels=True))
