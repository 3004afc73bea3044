"""What a rewrite's tensors share with the caller's model: a built rewrite shares no storage with it and
leaves it untouched, keeps tied weights tied and copies the tensors it does not slice; with
`share_unchanged=True` (verification's throwaway copy) the unchanged tensors are the caller's own and the
sliced ones equal the built rewrite's."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import models_zoo
import structprune
from helpers import assert_state_equal, snapshot_state
from structprune.rewrite import rewrite_model


def _analysed(name: str):
    model, x = models_zoo.create(name).eval(), models_zoo.example_inputs(name)
    return model, x, structprune.analyze(model, x)


@pytest.fixture(scope="module")
def densenet():
    torch.manual_seed(0)
    return _analysed("densenet")


def test_rewrite_shares_no_storage_and_leaves_the_caller_untouched(densenet) -> None:
    net, x, graph = densenet
    before = snapshot_state(net)
    plan = structprune.select(net, x, graph, ratio=0.5)
    pruned = rewrite_model(net, graph, plan)
    assert_state_equal(net.state_dict(), before)
    caller = {t.untyped_storage().data_ptr() for t in net.state_dict().values()}
    assert all(t.untyped_storage().data_ptr() not in caller for t in pruned.state_dict().values())
    kept = list(plan.keep["features.0.weight:0"])
    assert torch.equal(pruned.features[0].weight, net.features[0].weight.detach()[kept])
    assert all(isinstance(p, nn.Parameter) for p in pruned.parameters())


class TiedHead(nn.Module):
    """A hidden layer whose output projection is tied to the input embedding, plus an unsliced bias."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.hidden, self.out = nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 10)
        self.out.weight = self.embed.weight

    def forward(self, ids):
        return self.out(torch.relu(self.hidden(self.embed(ids))))


def test_rewrite_keeps_ties_and_copies_unsliced_tensors() -> None:
    net, ids = TiedHead().eval(), torch.randint(0, 10, (2, 5))
    graph = structprune.analyze(net, ids)
    pruned = rewrite_model(net, graph, structprune.select(net, ids, graph, ratio=0.5))
    assert pruned.out.weight is pruned.embed.weight and pruned.embed.weight.shape == (10, 4)
    assert pruned.out.bias is not net.out.bias and torch.equal(pruned.out.bias, net.out.bias)
    assert pruned.out.bias.untyped_storage().data_ptr() != net.out.bias.untyped_storage().data_ptr()
    assert net.embed.weight.shape == (10, 8)


def test_rewrite_sharing_unchanged_tensors_slices_the_same_and_copies_nothing_else() -> None:
    model, x, graph = _analysed("convnext")
    plan = structprune.select(model, x, graph, ratio=0.5)
    built, shared = rewrite_model(model, graph, plan), rewrite_model(model, graph, plan, share_unchanged=True)
    dense = dict(model.named_parameters())
    same = [k for k, p in shared.named_parameters() if p is dense[k]]
    assert same and not any(p is dense[k] for k, p in built.named_parameters())
    for key, value in built.state_dict().items():
        assert torch.equal(shared.state_dict()[key], value), key
