"""The structured OBS criterion (`obs`) and the stream reconstruction it asks for: the OBS update is
the least-squares refit, the refit cuts the layer's output error, whole heads are removed as blocks,
results repeat with a seed; on a tiny BERT the stream target finds the LayerNorm and beats no refit."""
from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import torch
from torch import nn

import structprune
from helpers import import_transformers
from structprune.calibrate import reconstruct
from structprune.calibrate.stream import find_reader
from structprune.criteria import CRITERIA, ScoringContext, StructuredOBS
from structprune.criteria.hessian import consumer_grams
from structprune.criteria.obs import RECONSTRUCTION_KEY, Surgeon, removal_order, stream_readers
from structprune.criteria.taps import consumer_taps
from structprune.criteria.views import group_views
from structprune.data.batches import Batch, calibration_batches
from structprune.selection import Plan


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 48), nn.GELU(), nn.Linear(48, 6)).eval()


def tiny_bert(layers: int = 2) -> nn.Module:
    transformers = import_transformers()
    config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.BertModel(config).eval()


def token_batch(samples: int, tokens: int, pad: int = 0, seed: int = 0) -> dict:
    """input_ids of `tokens` real tokens, then `pad` padded positions (attention_mask 0)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 60, (samples, tokens + pad), generator=gen)
    mask = torch.ones(samples, tokens + pad, dtype=torch.long)
    ids[:, tokens:], mask[:, tokens:] = 0, 0
    return {"input_ids": ids, "attention_mask": mask}


def test_obs_is_registered_and_asks_for_the_stream_reconstruction():
    net, x = mlp(), torch.randn(128, 8)
    views = group_views(structprune.analyze(net, x[:2]), net)
    selection = CRITERIA["obs"].select(views, ScoringContext(net, x[:2], [x]), {"0.weight:0": 20})
    assert len(selection.keep["0.weight:0"]) == 20
    assert selection.meta[RECONSTRUCTION_KEY] == {"target": "stream", "ridge": 0.01, "max_samples": 2048,
                                                  "tune_epochs": 0.0, "tune_lr": 1e-3, "weigh": "tokens"}


@pytest.mark.parametrize(("hessian_samples", "max_samples", "rows"), [(32, 100, 32), (None, 100, 100), (64, 16, 16)])
def test_h_is_measured_on_the_first_hessian_samples_at_most_max_samples(hessian_samples, max_samples, rows):
    net, x = mlp(), torch.randn(128, 8)
    views = group_views(structprune.analyze(net, x[:2]), net)
    criterion = StructuredOBS(hessian_samples=hessian_samples, max_samples=max_samples)
    grams = criterion._grams_of(views, ScoringContext(net, x[:2], [x]))
    assert [g.rows for g in grams["0.weight:0"]] == [rows]


class PostNormBlock(nn.Module):
    """x -> LayerNorm(x + fc2(relu(fc1(x)))): a post-norm feed-forward block (BERT's)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.norm = nn.Linear(8, 24), nn.Linear(24, 8), nn.LayerNorm(8)

    def forward(self, x):
        return self.norm(x + self.fc2(torch.relu(self.fc1(x))))


def test_h_rows_are_weighted_by_the_spread_of_the_stream_a_layernorm_reads():
    """Where a LayerNorm reads the consumer's output plus the residual, each row of H counts by
    1 / var of that stream at its position (as the stream refit weights it); elsewhere rows count once."""
    net, x = PostNormBlock().eval(), torch.randn(4, 5, 8) * torch.linspace(0.2, 5.0, 5).reshape(1, 5, 1)
    views = group_views(structprune.analyze(net, x[:2]), net)
    taps = consumer_taps(views, net)
    readers = stream_readers(net, taps, Batch(x, None))
    assert {name: (r.name, r.normalises) for name, r in readers.items()} == {"fc2": ("norm", True)}
    weighted = next(iter(consumer_grams(net, taps, [Batch(x, None)], readers=readers).values())).gram
    plain = next(iter(consumer_grams(net, taps, [Batch(x, None)]).values())).gram
    with torch.no_grad():
        rows = torch.relu(net.fc1(x)).reshape(-1, 24).double()
        weights = 1.0 / (x + net.fc2(torch.relu(net.fc1(x)))).var(dim=-1).reshape(-1).double()
    ones = torch.ones(len(rows), 1, dtype=torch.float64)
    augmented = torch.cat([rows, ones], dim=1)
    assert torch.allclose(plain, augmented.T @ augmented, rtol=1e-5)
    assert torch.allclose(weighted, (augmented * weights.unsqueeze(1)).T @ augmented, rtol=1e-5)
    assert not torch.allclose(weighted / weighted[-1, -1], plain / plain[-1, -1], rtol=1e-2)


def test_obs_update_is_the_ridge_least_squares_refit_of_the_kept_columns():
    """Batched greedy OBS ends at the weights that least squares gives for the kept set:
    argmin ||X W^T - X_K W_K'^T||^2 + lam ||W_K' - W_K||^2 (lam = damp * mean diag H, intercept free)."""
    net, x = mlp(), torch.randn(256, 8)
    taps = consumer_taps(group_views(structprune.analyze(net, x[:2]), net), net)
    state = next(iter(consumer_grams(net, taps, calibration_batches([x], None)).values()))
    surgeon = Surgeon.of(state, 48, damp=0.01)
    gone = removal_order([surgeon], 48, 30, rounds=4)
    kept = [c for c in range(48) if c not in set(gone)] + [48]  # and the intercept column
    h = state.gram.clone()
    lam = 0.01 * float(torch.diagonal(h)[:48].mean())
    h_kk = h[kept][:, kept] + torch.diag(torch.tensor([lam] * 18 + [0.0], dtype=h.dtype))
    rhs = h[kept] @ state.weight.T
    rhs[:18] += lam * state.weight[:, kept[:18]].T
    expected = torch.linalg.solve(h_kk, rhs).T
    assert torch.allclose(surgeon.weight[:, kept], expected, rtol=1e-6, atol=1e-8)
    assert float(surgeon.weight[:, gone].abs().max()) == 0.0


def test_refit_after_obs_cuts_the_layer_output_error():
    """Held-out relative error of the pruned MLP's output: OBS choice + refit well below no refit."""
    net, x, held = mlp(), torch.randn(512, 8), torch.randn(256, 8)
    result = structprune.compress(net, x[:2], ratio=0.5, criterion="obs", data=[x], reconstruct=False)
    refit = copy.deepcopy(result.model)
    report = reconstruct(net, refit, result.graph, result.plan, [x])
    dense = net(held).detach()

    def error(model):
        return float(((model(held).detach() - dense) ** 2).sum() / ((dense - dense.mean(0)) ** 2).sum())

    assert report.layers[0].error_after < report.layers[0].error_before
    assert error(refit) < 0.5 * error(result.model)
    assert error(refit) < 0.2  # 24 of 48 GELU neurons gone


def test_obs_removes_whole_heads_as_blocks():
    """The head group's consumer has 8 columns per head: the block rule keeps whole heads and the
    pruned BERT verifies."""
    net = tiny_bert(layers=1)
    data = [token_batch(16, 10, seed=s) for s in range(3)]
    result = structprune.compress(net, token_batch(2, 6), ratio=0.5, criterion="obs", data=data,
                                  ignore=["*.intermediate.*"])
    heads = result.plan.keep["encoder.layer.0.attention.self.query.weight:0"]
    assert len(heads) == 2 and result.model.encoder.layer[0].attention.self.query.out_features == 16


def test_obs_repeats_with_a_seed():
    net = tiny_bert()
    data = [token_batch(16, 10, pad=3, seed=s) for s in range(3)]
    runs = [structprune.compress(net, token_batch(2, 6), ratio=0.5, criterion="obs", data=data, seed=3,
                                 ignore=["*.attention.*"]) for _ in range(2)]
    assert runs[0].plan.keep == runs[1].plan.keep
    first, second = runs[0].model.state_dict(), runs[1].model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_stream_target_finds_the_layernorm_and_beats_no_refit():
    net = tiny_bert()
    data = [token_batch(32, 12, pad=4, seed=s) for s in range(4)]
    held = token_batch(32, 12, seed=99)
    result = structprune.compress(net, token_batch(2, 6), ratio=0.5, criterion="obs", data=data,
                                  ignore=["*.attention.*"], reconstruct=False)
    reader = find_reader(result.model, "encoder.layer.0.output.dense", data[0])
    assert reader is not None and reader.name == "encoder.layer.0.output.LayerNorm" and reader.normalises
    refit = copy.deepcopy(result.model)
    reconstruct(net, refit, result.graph, result.plan, data)
    with torch.no_grad():
        dense = net(**held).last_hidden_state
        gaps = [float((m(**held).last_hidden_state - dense).norm()) for m in (result.model, refit)]
    assert gaps[1] < 0.7 * gaps[0]


class ParallelBlocks(nn.Module):
    """GPT-J / GPT-NeoX / Phi: attention and MLP read one norm and both add to the stream, so both of a
    block's output layers have the same reader (the next block's norm)."""

    def __init__(self, width: int = 16, blocks: int = 2) -> None:
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(blocks + 1))
        self.mix = nn.ModuleList(nn.Sequential(nn.Linear(width, 32), nn.GELU(), nn.Linear(32, width))
                                 for _ in range(blocks))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(width, 48), nn.GELU(), nn.Linear(48, width))
                                 for _ in range(blocks))

    def forward(self, x):
        for norm, mix, mlp in zip(self.norms, self.mix, self.mlp):
            h = norm(x)
            x = x + mix(h) + mlp(h)
        return self.norms[-1](x)


def test_two_consumers_with_one_reader_are_both_refit_to_the_stream():
    """obs crashed here with KeyError: 'mix.0.2' (one reader hook kept per reader, not per consumer)."""
    torch.manual_seed(0)
    net = ParallelBlocks().eval()
    data = [torch.randn(16, 6, 16, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    held = torch.randn(16, 6, 16, generator=torch.Generator().manual_seed(99))
    result = structprune.compress(net, data[0][:2], ratio=0.5, criterion="obs", data=data)
    report = result.report.to_json()["calibration"]
    assert result.report.verification["ok"] and report["reconstructed_layers"] == 4
    plain = structprune.compress(net, data[0][:2], plan=result.plan).model
    with torch.no_grad():
        gaps = [float((m(held) - net(held)).norm()) for m in (plain, result.model)]
    assert gaps[1] < 0.8 * gaps[0]


def test_reader_is_none_where_a_batchnorm_reads_the_output():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.BatchNorm2d(4)).eval()
    assert find_reader(net, "3", torch.randn(2, 3, 8, 8)) is None


def test_reconstruct_refuses_an_unknown_target():
    net, x = mlp(), torch.randn(64, 8)
    plan = Plan({"0.weight:0": tuple(range(24))}, {"0.weight:0": 48})
    small = structprune.apply_plan(net, x[:2], plan)
    with pytest.raises(ValueError, match="'dense' or 'stream'"):
        reconstruct(net, small, structprune.analyze(net, x[:2]), plan, [x], target="local")


def test_obs_falls_back_to_magnitude_without_a_linear_consumer():
    """A group read only by a Conv1d (its rows are not built here): L1 ranking, still the count."""
    net = nn.Sequential(nn.Conv1d(3, 8, 1), nn.ReLU(), nn.Conv1d(8, 4, 3)).eval()
    x = torch.randn(4, 3, 16)
    views = group_views(structprune.analyze(net, x[:1]), net)
    selection = StructuredOBS().select(views, ScoringContext(net, x[:1], [x]), {views[0].group_id: 3})
    assert len(selection.keep[views[0].group_id]) == 3
    assert np.all(np.diff(selection.keep[views[0].group_id]) > 0)


@pytest.mark.parametrize("criterion, handed", [("obs", 2048), ("dropnet", 1024),
                                               (StructuredOBS(max_samples=3000), 3000)])
def test_a_job_hands_the_criterion_as_many_training_samples_as_it_reads(criterion, handed, monkeypatch):
    pipeline = importlib.import_module("structprune.pipeline")
    from structprune.compress_config import CompressConfig
    from structprune.data.bundle import DataBundle
    from structprune.io.load import LoadedModel
    seen = []
    monkeypatch.setattr(pipeline, "compress", lambda *a, data=None, **k: seen.append(len(data.dataset)))
    samples = torch.utils.data.TensorDataset(torch.randn(4000, 4), torch.zeros(4000, dtype=torch.long))
    bundle = DataBundle("many", torch.utils.data.DataLoader(samples, batch_size=64), None, 2, (4,))
    options = pipeline.JobOptions("zoo:mlp", CompressConfig(criterion=criterion), data="many")
    pipeline._compress_once(LoadedModel(torch.nn.Linear(4, 2), torch.randn(1, 4), "m", "zoo"), options, None, bundle)
    assert seen == [handed]
