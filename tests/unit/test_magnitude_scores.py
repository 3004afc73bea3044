"""Magnitude scores (L1, L2) over group views: equal to a float64 reference built from the full matrices
(inner axes and concat-shared tensors included), and to fresh temporaries when summed through one
scratch buffer per dtype; a view builds a member's matrix only when read, once per shared tensor."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import models_zoo
import structprune
from structprune.criteria.magnitude import L1, L2, _RowSums
from structprune.criteria.views import group_views


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


@pytest.mark.parametrize("criterion, p", [(L1, 1), (L2, 2)])
def test_scoring_through_one_scratch_buffer_gives_the_scores_of_fresh_temporaries(criterion, p) -> None:
    model = models_zoo.create("vit").eval()
    graph = structprune.analyze(model, models_zoo.example_inputs("vit"))
    model.head.weight = nn.Parameter(model.head.weight.detach().t().contiguous().t())  # a non-contiguous member
    views = group_views(graph, model)
    scores = criterion.score(views, None)
    for view in views:
        want = np.zeros(view.size)
        for m in (m for m in view.members if m.is_param):
            if m.axis == 0 and m.full.is_contiguous():
                rows = torch.linalg.vector_norm(m.tensor, ord=p, dim=1).pow(p)
            else:
                powers = m.full.abs() if p == 1 else torch.square(m.full)
                rows = powers.sum(dim=[d for d in range(m.full.ndim) if d != m.axis])
            kept = np.flatnonzero(m.positions >= 0)
            np.add.at(want, m.positions[kept], rows.double().numpy()[kept])
        assert np.array_equal(scores[view.group_id], want), view.group_id


def test_row_sums_reuse_one_scratch_buffer_per_dtype() -> None:
    sums = _RowSums()
    small, big = torch.ones(3, 4), torch.ones(5, 6)
    first = sums.buffer_like(big)
    assert first.shape == big.shape and sums.buffer_like(small).data_ptr() == first.data_ptr()
    assert len(sums.scratch) == 1 and sums.buffer_like(big.t()).shape == (6, 5)
