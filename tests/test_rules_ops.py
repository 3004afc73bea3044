"""Rules for ops Torch-Pruning handles (issue 11.6): recurrent layers, weights computed in the graph.
Each op: which axes the rule ties (or blocks, and why), and a small model using it pruned and verified."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import structprune
from structprune.graph.reasons import ReasonKind
from test_sp_helpers import group_with, outputs, positions, reason_kinds, refs

SEQ = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(1))
IMG = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))


def compress(model: nn.Module, x, **kw):
    torch.manual_seed(0)
    result = structprune.compress(model.eval(), x, **{"ratio": 0.5, **kw})
    assert result.report.verification["ok"]
    assert result.report.params_after < result.report.params_before
    return result


# ---- recurrent layers ------------------------------------------------------------------------------

class Recurrent(nn.Module):
    """Linear(6 -> 12) -> RNN(12 -> 16) -> last step -> Linear(-> 3)."""

    def __init__(self, cell=nn.LSTM, layers: int = 1, bidirectional: bool = False, hidden: int = 16,
                 given_state: bool = False) -> None:
        super().__init__()
        self.given_state = given_state
        self.inp = nn.Linear(6, 12)
        self.rnn = cell(12, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=True)
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), 3)

    def forward(self, x, h0=None):
        y = self.rnn(torch.relu(self.inp(x)), h0)[0] if self.given_state else self.rnn(torch.relu(self.inp(x)))[0]
        return self.out(y[:, -1])


GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN], ids=["lstm", "gru", "rnn"])
def test_rnn_gate_blocks_lose_the_same_hidden_units(cell) -> None:
    graph = structprune.analyze(Recurrent(cell).eval(), SEQ)
    hidden = group_with(graph, "rnn.weight_hh_l0:1")
    assert hidden.prunable and hidden.exact and hidden.size == 16
    assert refs(hidden) == {"rnn.weight_hh_l0:1", "rnn.weight_ih_l0:0", "rnn.weight_hh_l0:0", "rnn.bias_ih_l0:0",
                            "rnn.bias_hh_l0:0", "out.weight:1"}
    gates = GATES[cell]
    assert positions(hidden, "rnn.weight_ih_l0:0") == list(range(16)) * gates  # G blocks of H rows
    assert positions(hidden, "rnn.bias_hh_l0:0") == list(range(16)) * gates
    features = group_with(graph, "inp.weight:0")
    assert features.prunable and "rnn.weight_ih_l0:1" in refs(features)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN], ids=["lstm", "gru", "rnn"])
def test_rnn_model_is_pruned_and_verified(cell) -> None:
    result = compress(Recurrent(cell), SEQ)
    rnn = result.model.rnn
    assert (rnn.input_size, rnn.hidden_size) == (6, 8)
    assert rnn.weight_ih_l0.shape == (GATES[cell] * 8, 6) and rnn.weight_hh_l0.shape == (GATES[cell] * 8, 8)
    assert result.model.out.in_features == 8
    assert result.report.verification["masking_error"] < 1e-5
    assert outputs(result.model, torch.randn(3, 7, 6)).shape == (3, 3)


def test_stacked_bidirectional_lstm_keeps_one_hidden_size_for_every_layer_and_direction() -> None:
    graph = structprune.analyze(Recurrent(nn.LSTM, layers=2, bidirectional=True).eval(), SEQ)
    hidden = group_with(graph, "rnn.weight_hh_l0:1")
    assert {"rnn.weight_hh_l1_reverse:1", "rnn.weight_ih_l1:1", "rnn.weight_ih_l1_reverse:1", "out.weight:1"} <= refs(hidden)
    assert positions(hidden, "rnn.weight_ih_l1:1") == list(range(16)) * 2  # cat(forward h, backward h)
    result = compress(Recurrent(nn.LSTM, layers=2, bidirectional=True), SEQ)
    rnn = result.model.rnn
    assert rnn.hidden_size == 8 and rnn.weight_ih_l1_reverse.shape == (32, 16) and result.model.out.in_features == 16


def test_rnn_initial_state_from_the_caller_blocks_the_hidden_units() -> None:
    net = Recurrent(nn.GRU, given_state=True).eval()
    graph = structprune.analyze(net, (SEQ, torch.zeros(1, 2, 16)))
    hidden = group_with(graph, "rnn.weight_hh_l0:1")
    assert not hidden.prunable and reason_kinds(hidden) == {ReasonKind.MODEL_INPUT}
    assert group_with(graph, "inp.weight:0").prunable


def test_lstm_with_projections_is_blocked_naming_the_op() -> None:
    net = nn.Sequential(nn.Linear(6, 12), nn.LSTM(12, 16, proj_size=4, batch_first=True))
    group = group_with(structprune.analyze(net.eval(), SEQ), "0.weight:0")
    assert not group.prunable and "aten.lstm (recurrent layer with projections" in group.reasons[0].detail


# ---- weights computed in the graph -----------------------------------------------------------------

class StoredWeights(nn.Module):
    """F.conv2d / F.linear with nn.Parameter attributes, optionally through a computed weight."""

    def __init__(self, computed: bool) -> None:
        super().__init__()
        self.computed = computed
        self.w = nn.Parameter(torch.randn(8, 3, 3, 3) * 0.3)
        self.scale = nn.Parameter(torch.rand(8, 1, 1, 1) + 0.5)
        self.b = nn.Parameter(torch.randn(8) * 0.1)
        self.lw = nn.Parameter(torch.randn(4, 8) * 0.3)

    def forward(self, x):
        if self.computed:
            y = torch.relu(F.conv2d(x, self.w * self.scale, self.b * 2.0, padding=1))
            return F.linear(y.mean((2, 3)), self.lw.t().t() * 0.5)
        return F.linear(torch.relu(F.conv2d(x, self.w, self.b, padding=1)).mean((2, 3)), self.lw)


@pytest.mark.parametrize("computed", [False, True], ids=["parameter", "computed"])
def test_stored_and_computed_weights_tie_every_parameter_axis(computed: bool) -> None:
    graph = structprune.analyze(StoredWeights(computed).eval(), IMG)
    group = group_with(graph, "w:0")
    assert group.prunable and group.exact and group.size == 8
    assert refs(group) == {"w:0", "b:0", "lw:1"} | ({"scale:0"} if computed else set())
    result = compress(StoredWeights(computed), IMG)
    assert (result.model.w.shape, result.model.scale.shape[0], result.model.b.shape, result.model.lw.shape) == \
        ((4, 3, 3, 3), 8 if not computed else 4, (4,), (4, 4))
    assert result.report.verification["masking_error"] < 1e-5


class SharedComputedWeight(nn.Module):
    """The computed weight is also read by a non-layer op: its axes cannot be followed, so it blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(8, 3, 1, 1))
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        w = self.w * 2.0
        return self.c(F.conv2d(x, w) + w.sum())


def test_a_computed_weight_read_elsewhere_is_blocked_naming_the_layer() -> None:
    group = group_with(structprune.analyze(SharedComputedWeight().eval(), IMG), "c.weight:1")
    assert not group.prunable
    assert any("aten.conv2d (convolution whose weight is not a parameter)" in r.detail for r in group.reasons)
