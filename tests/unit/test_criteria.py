"""Data-driven criteria: DropNet, Taylor, i-SpaSP, coreset, curvature (Hutchinson, power iteration),
K-FAC train-and-prune; clear errors without data; determinism on zoo models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

import models_zoo
import structprune
from structprune.criteria import (
    CRITERIA,
    Coreset,
    DropNet,
    ISpaSP,
    KFACTrainPrune,
    ScoringContext,
    Spectral,
    Taylor,
    get_criterion,
)
from structprune.criteria.budget import ParamModel, allocate
from structprune.criteria.coreset import sample_channels
from structprune.criteria.curvature import channel_elements
from structprune.criteria.ispasp import capture_block, residual, select_block
from structprune.criteria.magnitude import L2
from structprune.criteria.taps import consumer_taps
from structprune.criteria.views import group_views
from structprune.data import load_data
from structprune.data.batches import calibration_batches
from structprune.selection import Plan

DATA_DRIVEN = sorted(name for name, c in CRITERIA.items() if getattr(c, "needs_data", False))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread avoids oversubscription stalls
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_mlp():
    """A small MLP trained on digits (a few seconds), and a 256-sample labelled calibration loader."""
    torch.manual_seed(0)
    bundle = load_data("digits", input_shape=(64,), batch_size=64)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10))
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(12):
        for x, y in bundle.train:
            opt.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
    return net.eval(), list(bundle.train)[:4]


@pytest.fixture(scope="module")
def digits_train():
    return load_data("digits", input_shape=(64,), batch_size=64).train


def _views(net, x):
    graph = structprune.analyze(net, x)
    return graph, group_views(graph, net)


def _constructed_conv():
    """Conv(1->6, 1x1) with weights w_c > 0, ReLU, Conv(6->2): on positive inputs channel c's mean
    activation is w_c * mean(x), so the ranking is the weights' order."""
    net = nn.Sequential(nn.Conv2d(1, 6, 1, bias=False), nn.ReLU(), nn.Conv2d(6, 2, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([3.0, 0.5, 2.0, 0.1, 5.0, 1.0]).reshape(6, 1, 1, 1))
    x = torch.rand(16, 1, 5, 5) + 0.1
    return net.eval(), x


def test_dropnet_scores_are_mean_post_activations_and_drop_the_lowest():
    net, x = _constructed_conv()
    graph, views = _views(net, x[:2])
    ctx = ScoringContext(net, x[:2], [(x[:8], None), (x[8:], None)])
    scores = DropNet().score(views, ctx)["0.weight:0"]
    expected = torch.relu(net[0](x)).mean(dim=(2, 3)).mean(dim=0).double().detach().numpy()
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    kept = DropNet().select(views, ctx, {"0.weight:0": 3}).keep["0.weight:0"]
    assert kept == (0, 2, 4)  # weights 3.0, 2.0, 5.0: the three highest means


def test_dropnet_global_scope_compares_raw_means_across_groups():
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0], [2.0, 0], [3.0, 0], [4.0, 0]]))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.eye(4) * 10)
        net[2].bias.zero_()
    x = torch.rand(32, 2) + 0.5
    graph, views = _views(net.eval(), x[:2])
    ctx = ScoringContext(net, x[:2], [(x, None)])
    sel = DropNet(scope="global").select(views, ctx, {"0.weight:0": 2, "2.weight:0": 2})
    # globally lowest: first-layer units 0, 1, 2 (the last one stays), then the weakest second-layer unit
    assert sel.keep == {"0.weight:0": (3,), "2.weight:0": (1, 2, 3)}
    iterative = DropNet(scope="global", iterative=True, max_cycles=10).select(views, ctx, {"0.weight:0": 2,
                                                                                           "2.weight:0": 2})
    assert sum(len(k) for k in iterative.keep.values()) == 4


def test_dropnet_iterative_reaches_the_counts_in_cycles():
    net, x = _constructed_conv()
    graph, views = _views(net, x[:2])
    ctx = ScoringContext(net, x[:2], [(x, None)])
    sel = DropNet(iterative=True, fraction=0.2).select(views, ctx, {"0.weight:0": 2})
    assert sel.keep["0.weight:0"] == (0, 4)
    order = DropNet(iterative=True).score(views, ctx)["0.weight:0"]
    assert list(np.argsort(order)) == [3, 1, 5, 2, 0, 4]


def test_taylor_is_abs_sum_of_w_times_grad_over_the_group():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    graph, views = _views(net, x[:2])
    scores = Taylor().score(views, ScoringContext(net, x[:2], [(x, y)]))["0.weight:0"]
    loss = nn.functional.cross_entropy(net(x), y)
    g0w, g0b, g2w = torch.autograd.grad(loss, [net[0].weight, net[0].bias, net[2].weight])
    manual = ((net[0].weight * g0w).sum(1) + net[0].bias * g0b + (net[2].weight * g2w).sum(0)).abs()
    np.testing.assert_allclose(scores, manual.detach().double().numpy(), rtol=1e-5, atol=1e-9)
    assert net[0].weight.grad is None  # the model's .grad fields are untouched


def test_ispasp_residual_beats_magnitude_and_never_exceeds_its_first_iteration(digits_mlp):
    """The paper's setting: the hidden layer of a trained layer pair, keep ratios below one half."""
    net, data = digits_mlp
    graph, views = _views(net, data[0][0][:2])
    group = next(v for v in views if v.group_id == "0.weight:0")
    taps = [t for t in consumer_taps(views, net) if t.group_id == group.group_id]
    block = capture_block(net, group, taps, list(calibration_batches(data, None, torch.device("cpu"))))
    for s in (4, 8, 12):
        chosen, _, history = select_block(block, s, iterations=20)
        assert history == sorted(history, reverse=True)
        magnitude = set(np.argsort(-L2.fn(group, None))[:s].tolist())
        assert residual(block, chosen) <= residual(block, magnitude) * (1 + 1e-6)
        assert all(h <= history[0] * (1 + 1e-6) for h in history)
        assert len(chosen) == s


def test_ispasp_select_keeps_the_counts_block_by_block(digits_mlp):
    net, data = digits_mlp
    graph, views = _views(net, data[0][0][:2])
    sel = ISpaSP(iterations=5).select(views, ScoringContext(net, None, data), {"0.weight:0": 8, "2.weight:0": 6})
    assert [len(sel.keep[g]) for g in ("0.weight:0", "2.weight:0")] == [8, 6]


def test_coreset_sampled_frequencies_converge_to_p_proportional_to_s():
    s = np.array([0.9, 0.1, 0.4, 0.05, 0.3, 0.25])
    p = s / s.sum()
    rng = np.random.default_rng(0)
    m = 200_000
    kept, weights = sample_channels(p, m, rng)
    frequencies = weights * p[kept]  # weight = count / (m p)  ->  count / m
    np.testing.assert_allclose(frequencies, p[kept], atol=0.005)
    np.testing.assert_allclose(weights, 1.0, atol=0.05)  # unbiased reweighting
    assert list(kept) == list(range(len(s)))


def test_coreset_allocation_meets_the_parameter_budget(digits_mlp):
    net, data = digits_mlp
    graph, views = _views(net, data[0][0][:2])
    crit, ctx = Coreset(), ScoringContext(net, None, data)
    sens, eta = crit.sensitivities(views, ctx)
    params = ParamModel(views, net)
    budget = params.count({"0.weight:0": 12, "2.weight:0": 8})
    alloc = allocate(sens, eta, {v.group_id: v.size for v in views}, params, budget)
    assert alloc.params <= budget and alloc.params >= 0.8 * budget
    assert all(n >= 1 for n in alloc.counts.values())
    sel = crit.select(views, ctx, {"0.weight:0": 12, "2.weight:0": 8})
    plan = Plan(sel.keep, {v.group_id: v.size for v in views})
    pruned = structprune.apply_plan(net, data[0][0][:2], plan, graph=graph)
    assert sum(p.numel() for p in pruned.parameters()) == params.count({k: len(v) for k, v in sel.keep.items()})
    assert sum(p.numel() for p in pruned.parameters()) <= budget


def test_coreset_sampled_selection_carries_channel_scales(digits_mlp):
    net, data = digits_mlp
    graph, views = _views(net, data[0][0][:2])
    sel = Coreset(variant="sampled", allocate=False).select(views, ScoringContext(net, None, data, seed=3),
                                                             {"0.weight:0": 10, "2.weight:0": 8})
    scales = sel.meta["channel_scales"]
    assert all(len(scales[g]) == len(sel.keep[g]) for g in scales)
    assert all(w > 0 for g in scales for w in scales[g])


def _tiny_curvature_problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).eval()
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    graph, views = _views(net, x[:2])
    return net, views, ScoringContext(net, x[:2], [(x, y)]), _exact_hessian(net, x, y)


def _exact_hessian(net, x, y):
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach() for _, p in net.named_parameters())

    def loss(*flat):
        return nn.functional.cross_entropy(functional_call(net, dict(zip(names, flat)), (x,)), y)

    blocks = torch.autograd.functional.hessian(loss, params)
    sizes = [p.numel() for p in params]
    rows = [torch.cat([blocks[i][j].reshape(sizes[i], sizes[j]) for j in range(len(sizes))], 1)
            for i in range(len(sizes))]
    return torch.cat(rows, 0), names, sizes


def _channel_of_elements(net, view, names, sizes):
    el = channel_elements(view, net)
    return np.concatenate([el.index[n].reshape(-1).numpy() if n in el.index else -np.ones(s, dtype=int)
                           for n, s in zip(names, sizes)])


def test_power_iteration_matches_eigvalsh_of_the_exact_hessian_block():
    net, views, ctx, (hessian, names, sizes) = _tiny_curvature_problem()
    for view in views:
        chan = _channel_of_elements(net, view, names, sizes)
        block = hessian[np.ix_(chan >= 0, chan >= 0)]
        exact = float(torch.linalg.eigvalsh(block).abs().max())
        estimate, iterations = Spectral().spectral_radius(view, ctx)
        assert abs(estimate - exact) <= 0.01 * exact and iterations <= 100


def test_hutchinson_block_traces_and_quadratics_match_the_exact_hessian():
    net, views, ctx, (hessian, names, sizes) = _tiny_curvature_problem()
    w = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    crit = Spectral(probes=2000)
    for view in views:
        chan = _channel_of_elements(net, view, names, sizes)
        blocks = [hessian[np.ix_(chan == c, chan == c)] for c in range(view.size)]
        traces = np.array([float(b.trace()) for b in blocks])
        quads = np.array([float(w[chan == c] @ b @ w[chan == c]) for c, b in enumerate(blocks)])
        np.testing.assert_allclose(crit.block_traces([view], ctx)[view.group_id], traces,
                                   atol=0.15 * np.abs(traces).max())
        np.testing.assert_allclose(2 * crit.score([view], ctx)[view.group_id], quads, atol=0.05 * np.abs(quads).max())


def test_kfac_train_and_prune_trains_from_scratch_and_keeps_the_counts(digits_mlp, digits_train):
    _, data = digits_mlp
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 10))
    graph, views = _views(net, data[0][0][:2])
    sel = KFACTrainPrune(epochs=6, prune_epochs=3, kfac_batches=2, lr=0.1).select(
        views, ScoringContext(net, None, digits_train), {"0.weight:0": 16, "2.weight:0": 12})
    assert [len(sel.keep[g]) for g in ("0.weight:0", "2.weight:0")] == [16, 12]
    assert len(sel.meta["spectral_radius_history"]) == 3
    pruned = structprune.apply_plan(net, data[0][0][:2], Plan(sel.keep, {v.group_id: v.size for v in views}),
                                    graph=graph)
    x, y = data[0]
    assert (pruned(x).argmax(1) == y).float().mean() > 0.8  # 0.89 measured; 16/12 trained from scratch: 0.92


@pytest.mark.parametrize("name", DATA_DRIVEN)
def test_data_driven_criteria_without_data_fail_clearly(name):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    graph, views = _views(net, torch.randn(2, 3))
    with pytest.raises(ValueError, match="data-driven and needs"):
        get_criterion(name).score(views, ScoringContext(net, torch.randn(2, 3), None))


@pytest.mark.parametrize("crit", [Taylor(), Spectral(probes=1)], ids=lambda c: c.name)
def test_loss_based_criteria_reject_unlabelled_data(crit):
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    graph, views = _views(net, torch.randn(2, 3))
    with pytest.raises(ValueError, match="labelled"):
        crit.score(views, ScoringContext(net, None, [torch.randn(4, 3)]))


FAST_ZOO = ["mlp", "cnn", "vgg", "resnet20", "mobilenet_v2", "densenet"]
SLOW_ZOO = [n for n in models_zoo.list_models() if n not in FAST_ZOO]
LIGHT = [DropNet(), DropNet(name="dropnet_iterative", iterative=True, max_cycles=2), Taylor(),
         ISpaSP(iterations=3), Coreset(max_samples=8), Coreset(name="coreset_sampled", variant="sampled"),
         Spectral(probes=1, max_samples=8)]


def _zoo_setup(name):
    kw = {} if models_zoo.spec(name).input_kind != "image" else {"in_chans": 1, "image_size": 8}
    torch.manual_seed(0)
    net = models_zoo.create(name, **kw).eval()
    x = models_zoo.example_inputs(name, batch=8, **kw)
    labels = torch.randint(0, models_zoo.spec(name).num_classes, (8,))
    return net, models_zoo.example_inputs(name, batch=2, **kw), [(x, labels)]


def _check_deterministic(name):
    net, example, data = _zoo_setup(name)
    graph = structprune.analyze(net, example)
    views = group_views(graph, net)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for crit in LIGHT:
        first = crit.score(views, ScoringContext(net, example, data, seed=7))
        second = crit.score(views, ScoringContext(net, example, data, seed=7))
        assert set(first) == {v.group_id for v in views}, crit.name
        for view in views:
            assert first[view.group_id].shape == (view.size,), (crit.name, view.group_id)
            assert np.isfinite(first[view.group_id]).all(), (crit.name, view.group_id)
            np.testing.assert_array_equal(first[view.group_id], second[view.group_id], err_msg=crit.name)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # scoring never mutates


@pytest.mark.parametrize("name", FAST_ZOO)
def test_every_criterion_is_deterministic_on_zoo_models(name):
    _check_deterministic(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_ZOO)
def test_every_criterion_is_deterministic_on_the_rest_of_the_zoo(name):
    _check_deterministic(name)
