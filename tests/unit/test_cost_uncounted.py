"""An op whose arithmetic torch's FLOP counter counts but our MAC rules do not is named, not silently
counted as 0: by `uncounted_ops` for a captured graph, by `MacCounter.uncounted` for a forward, and in the
report (`prunable.uncounted_ops`, with one UserWarning); a model our rules cover has none."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import models_zoo
import structprune
from structprune.capture import capture
from structprune.graph import cost
from structprune.graph.cost import MacCounter, flop_counted_ops, macs_of, prunable_section, uncounted_ops

SLOW_CONV = "aten._slow_conv2d_forward"


class SlowConv(nn.Module):
    """Two convolutions, then a third by `aten._slow_conv2d_forward`: a forward op in torch's FLOP
    registry that our MAC rules do not count (it blocks the channels it reads; conv1's stay prunable)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.weight = nn.Parameter(torch.randn(4, 8, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return torch.ops.aten._slow_conv2d_forward(x, self.weight, [3, 3], None, [1, 1], [1, 1])


COUNTED = 8 * 8 * 8 * 3 * 3 * 3 + 8 * 8 * 8 * 8 * 3 * 3  # conv1 + conv2; the slow conv is not counted


def test_the_op_is_in_torchs_flop_registry_and_not_in_our_rules() -> None:
    assert torch.ops.aten._slow_conv2d_forward in flop_counted_ops()
    assert "_slow_conv2d_forward" not in cost._MAC_RULES
    assert torch.ops.aten.convolution in flop_counted_ops() and "convolution" in cost._MAC_RULES


def test_a_captured_graph_names_its_uncounted_op() -> None:
    captured = capture(SlowConv().eval(), torch.randn(1, 3, 8, 8))
    assert uncounted_ops(captured) == (SLOW_CONV,)
    assert macs_of(captured) == COUNTED


def test_the_mac_counter_names_the_uncounted_ops_that_ran() -> None:
    with MacCounter() as counter, torch.no_grad():
        SlowConv().eval()(torch.randn(1, 3, 8, 8))
    assert (counter.total, counter.uncounted) == (COUNTED, (SLOW_CONV,))


def test_an_op_dropped_from_the_rules_is_reported_uncounted(monkeypatch) -> None:
    """The rule table decides: without its `convolution` rule, a Conv2d's forward is uncounted."""
    monkeypatch.delitem(cost._MAC_RULES, "convolution")
    with MacCounter() as counter, torch.no_grad():
        nn.Conv2d(3, 4, 3)(torch.randn(1, 3, 8, 8))
    assert (counter.total, counter.uncounted) == (0, ("aten.convolution",))


def test_report_lists_the_uncounted_ops_and_warns_once() -> None:
    model, x = SlowConv().eval(), torch.randn(1, 3, 8, 8)
    with pytest.warns(UserWarning, match=f"MAC counts leave out {SLOW_CONV}") as caught:
        report = structprune.compress(model, x, ratio=0.5).report.to_json()
    assert len([w for w in caught if SLOW_CONV in str(w.message)]) == 1
    assert report["prunable"]["uncounted_ops"] == [SLOW_CONV]
    assert report["macs"]["before"] == COUNTED


@pytest.mark.parametrize("name", ["resnet20", "bert"])
def test_models_our_rules_cover_have_no_uncounted_ops(name: str) -> None:
    model, x = models_zoo.create(name).eval(), models_zoo.example_inputs(name)
    graph = structprune.analyze(model, x)
    assert uncounted_ops(graph.captured) == ()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        assert "uncounted_ops" not in prunable_section(graph)
    with MacCounter() as counter, torch.no_grad():
        model(**x) if isinstance(x, dict) else model(*x) if isinstance(x, tuple) else model(x)
    assert counter.uncounted == () and counter.total == macs_of(graph.captured)
