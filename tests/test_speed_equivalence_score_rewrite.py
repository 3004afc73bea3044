"""The fast paths of scoring and rewriting give what the plain definitions give: magnitude scores
equal a float64 reference (inner axes and concat-shared tensors included), group views build their
matrices only when read, and the rewrite slices without copying dense tensors first, yet shares no
storage with the caller's model and keeps tied weights tied."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import models_zoo
import structprune
from structprune.criteria.magnitude import L1, L2
from structprune.rewrite import rewrite_model
from structprune.scoring import group_views
from test_sp_helpers import assert_state_equal, snapshot_state


def reference_magnitude(view, p: int) -> np.ndarray:
    """Sum over parameter members of each channel's rows of |w|^p, in float64 from the full matrix."""
    total = np.zeros(view.size)
    for member in view.members:
        if member.is_param:
            full = member.full.double().movedim(member.axis, 0).reshape(len(member.positions), -1)
            rows = np.flatnonzero(member.positions >= 0)
            np.add.at(total, member.positions[rows], full[rows].abs().pow(p).sum(1).numpy())
    return total


@pytest.fixture(scope="module")
def densenet():
    torch.manual_seed(0)
    net = models_zoo.create("densenet").eval()
    x = models_zoo.example_inputs("densenet")
    return net, x, structprune.analyze(net, x)


@pytest.mark.parametrize("criterion,p", [(L1, 1), (L2, 2)])
def test_magnitude_matches_a_float64_reference_on_concat_consumers(densenet, criterion, p: int) -> None:
    net, _, graph = densenet
    views = group_views(graph, net)
    assert any(m.axis != 0 and (m.positions < 0).any() for v in views for m in v.members if m.is_param)
    scores = criterion.score(views, None)
    for view in views:
        np.testing.assert_allclose(scores[view.group_id], reference_magnitude(view, p), rtol=1e-5)


def test_group_view_matrices_are_built_on_first_read_and_shared(densenet) -> None:
    net, _, graph = densenet
    views = group_views(graph, net)
    members = [m for v in views for m in v.members if m.axis != 0 and (m.positions < 0).any()]
    assert all("matrix" not in m.source.__dict__ for m in members)
    member = members[0]
    sharing = [m for v in views for m in v.members if m.source is member.source]
    assert len(sharing) > 1 and all(m.tensor is member.tensor for m in sharing)
    expected = dict(net.named_parameters())[member.fqn].detach().movedim(member.axis, 0)
    assert torch.equal(member.tensor, expected.reshape(len(member.positions), -1))


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
