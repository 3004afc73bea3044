"""Capture by a lean torch.export: the same program as a plain export (and the same failure where that
fails), module stacks kept and stack traces dropped for the MACs table, torch's flags restored; the
verification's re-capture of the pruned model still rejects a model that does not export and is reused
to count the pruned model's MACs."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.fx import _lazy_graph_module
from torch.fx._lazy_graph_module import _LazyGraphModule

import models_zoo
import structprune
from structprune.capture import capture
from structprune.capture.export import lean_export
from structprune.data.running import eval_outputs as run_model
from structprune.data.running import normalize_inputs
from structprune.errors import CaptureError
from structprune.rewrite import rewrite_model
from structprune.verify import verify_rewrite


class Gated(nn.Module):
    """Runs `net`, then branches on a tensor value: eager runs it, torch.export cannot."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)
        return y if y.sum() > 0 else -y


def _ops(program: torch.export.ExportedProgram) -> list[tuple[str, str, tuple]]:
    return [(n.op, str(n.target), tuple(n.meta["val"].shape) if isinstance(n.meta.get("val"), torch.Tensor) else ())
            for n in program.graph.nodes]


def _flags() -> tuple[bool, bool]:
    return torch.fx.config.do_not_emit_stack_traces, _lazy_graph_module._use_lazy_graph_module_flag


def _compressed(name: str):
    model = models_zoo.create(name).eval()
    x = models_zoo.example_inputs(name)
    graph = structprune.analyze(model, x)
    plan = structprune.select(model, x, graph, ratio=0.5)
    return model, x, graph, plan, rewrite_model(model, graph, plan)


@pytest.mark.parametrize("name", ["cnn", "resnet20", "bert"])
def test_lean_capture_is_the_same_program_as_a_plain_export(name: str) -> None:
    model = models_zoo.create(name).eval()
    x = models_zoo.example_inputs(name)
    args, kwargs = normalize_inputs(x)
    plain = torch.export.export(model, args, kwargs, strict=False)
    lean = capture(model, x).program
    assert _ops(lean) == _ops(plain)
    assert lean.graph_signature == plain.graph_signature
    assert not isinstance(lean.graph_module, _LazyGraphModule)  # the program's own code is generated eagerly
    assert torch.allclose(run_model(lean.module(), x)[0], run_model(model, x)[0], atol=1e-6)


def test_lean_capture_keeps_module_stacks_drops_stack_traces_and_restores_the_flags() -> None:
    before = _flags()
    program = capture(models_zoo.create("cnn").eval(), models_zoo.example_inputs("cnn")).program
    calls = [n for n in program.graph.nodes if n.op == "call_function"]
    assert all(n.meta.get("nn_module_stack") for n in calls)  # the MACs table reads these
    assert not any(n.meta.get("stack_trace") for n in calls)
    assert _flags() == before


def test_lean_capture_fails_where_export_fails_and_restores_the_flags() -> None:
    before = _flags()
    model, x = Gated(models_zoo.create("cnn")).eval(), models_zoo.example_inputs("cnn")
    with pytest.raises(Exception) as plain:
        torch.export.export(model, (x,), strict=False)
    with pytest.raises(CaptureError, match="could not capture Gated") as lean:
        capture(model, x)
    assert type(lean.value.__cause__) is type(plain.value)
    assert str(plain.value).splitlines()[0] in str(lean.value)
    assert _flags() == before
    with lean_export():
        assert _flags() == (True, True)
    assert _flags() == before


def test_verification_recapture_still_rejects_a_model_that_does_not_export() -> None:
    model, x, graph, plan, pruned = _compressed("cnn")
    verdict = verify_rewrite(model, Gated(pruned), x, graph, plan)
    recapture = verdict.checks[0]
    assert recapture.name == "recapture" and not recapture.ok and not verdict.ok
    assert "could not capture Gated" in recapture.detail and "data-dependent" in recapture.detail
    assert verdict.pruned_capture is None


def test_verification_recapture_is_reused_for_macs() -> None:
    model, x, graph, plan, pruned = _compressed("cnn")
    verdict = verify_rewrite(model, pruned, x, graph, plan)
    assert verdict.ok, verdict.failures()
    assert _ops(verdict.pruned_capture.program) == _ops(torch.export.export(pruned, (x,), strict=False))
