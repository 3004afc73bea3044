"""Padded tokens carry no evidence: for dict batches with an `attention_mask`, the data-driven criteria
(dropnet, coreset, ispasp, obs) measure the same with and without extra padded positions; on inputs
without a mask nothing changed (DropNet equals the plain mean |activation|)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import structprune
from helpers import import_transformers
from structprune.criteria import Coreset, DropNet, ISpaSP, ScoringContext
from structprune.criteria.activations import mean_abs_activation
from structprune.criteria.hessian import consumer_grams
from structprune.criteria.taps import Padding, consumer_taps, token_places
from structprune.criteria.views import group_views
from structprune.data.batches import calibration_batches, token_mask


@pytest.fixture(scope="module")
def bert():
    transformers = import_transformers()
    config = transformers.BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    net = transformers.BertModel(config).eval()
    example = {"input_ids": torch.randint(1, 60, (2, 6)), "attention_mask": torch.ones(2, 6, dtype=torch.long)}
    views = group_views(structprune.analyze(net, example), net)
    return net, example, views


def batches(pad: int) -> list[dict]:
    """Three batches of 12 sentences of 4-10 real tokens (their own padding), plus `pad` more padded places."""
    out = []
    for seed in range(3):
        gen = torch.Generator().manual_seed(seed)
        ids = torch.randint(1, 60, (12, 10), generator=gen)
        lengths = torch.randint(4, 11, (12,), generator=gen)
        mask = (torch.arange(10) < lengths[:, None]).long()
        ids, mask = torch.cat([ids * mask, torch.zeros(12, pad, dtype=torch.long)], 1), \
            torch.cat([mask, torch.zeros(12, pad, dtype=torch.long)], 1)
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def contexts(net, example):
    return [ScoringContext(net, example, batches(pad)) for pad in (0, 7)]


def test_token_mask_and_places():
    batch = {"input_ids": torch.zeros(2, 3), "attention_mask": torch.tensor([[1, 1, 0], [1, 0, 0]])}
    mask = token_mask(batch)
    assert mask.dtype == torch.bool and int(mask.sum()) == 3
    assert token_mask(torch.zeros(2, 3)) is None and token_mask({"x": torch.zeros(2, 3)}) is None
    assert token_places(torch.zeros(2, 5, 3, 4), -1, mask).shape == (2, 15)       # (samples, heads, tokens, dim)
    assert token_places(torch.zeros(6, 4), -1, mask).reshape(-1).tolist() == mask.reshape(-1).tolist()
    assert token_places(torch.zeros(2, 4), -1, mask) is None                       # no token axis: every place


def test_dropnet_ignores_padding(bert):
    net, example, views = bert
    plain, padded = (DropNet().score(views, ctx) for ctx in contexts(net, example))
    for gid in plain:
        np.testing.assert_allclose(plain[gid], padded[gid], rtol=1e-4, atol=1e-6)


def test_coreset_ignores_padding(bert):
    net, example, views = bert
    plain, padded = (Coreset().sensitivities(views, ctx)[0] for ctx in contexts(net, example))
    for gid in plain:
        np.testing.assert_allclose(plain[gid], padded[gid], rtol=1e-4, atol=1e-6)


def test_ispasp_ignores_padding(bert):
    net, example, views = bert
    counts = {v.group_id: v.size // 2 for v in views}
    plain, padded = (ISpaSP(iterations=5).select(views, ctx, counts).keep for ctx in contexts(net, example))
    assert plain == padded


def test_obs_hessians_ignore_padding(bert):
    net, example, views = bert
    taps = consumer_taps(views, net)
    plain, padded = (consumer_grams(net, taps, calibration_batches(ctx.data, None)) for ctx in contexts(net, example))
    assert plain.keys() == padded.keys() and plain
    for key in plain:
        assert plain[key].rows == padded[key].rows
        torch.testing.assert_close(plain[key].gram, padded[key].gram, rtol=1e-5, atol=1e-6)


def test_padding_changes_the_scores_it_should_not_without_the_mask(bert):
    """The check above has teeth: without the mask, the padded places do move DropNet's scores."""
    net, example, views = bert
    unmasked = [{"input_ids": b["input_ids"]} for b in batches(7)]
    masked = DropNet().score(views, ScoringContext(net, example, batches(7)))
    plain = DropNet().score(views, ScoringContext(net, example, unmasked))
    assert any(not np.allclose(masked[g], plain[g], rtol=1e-3) for g in masked)


def test_dropnet_unchanged_on_tensor_inputs():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3)).eval()
    x = torch.randn(64, 6)
    views = group_views(structprune.analyze(net, x[:2]), net)
    ours = DropNet().score(views, ScoringContext(net, x[:2], [(x, None)]))
    before = mean_abs_activation(net, consumer_taps(views, net), calibration_batches([(x, None)], None))
    for gid in before:
        np.testing.assert_array_equal(ours[gid], before[gid])
    assert Padding().places(consumer_taps(views, net)[0], x) is None
