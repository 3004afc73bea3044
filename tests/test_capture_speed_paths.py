"""The fast paths of capture and verify keep their behaviour: a lean export yields the same program as a
plain torch.export (and fails where it fails), the verification re-capture still rejects a model that
does not export, and the masked dense reference (built without a deep copy) gives the same outputs as
the deep-copied one while leaving the caller's model untouched."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from test_api import TiedEmbedding
from torch import nn
from torch.fx import _lazy_graph_module
from torch.fx._lazy_graph_module import _LazyGraphModule

import models_zoo
import structprune
from structprune.capture import capture, normalize_inputs
from structprune.capture.export import lean_export
from structprune.errors import CaptureError
from structprune.rewrite import rewrite_model
from structprune.rules.context import ROLE_IN
from structprune.data.running import eval_outputs as run_model
from structprune.verify import verify_rewrite
from structprune.verify.verify import _masked_outputs, _masked_state


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


def _exact_pruned_groups(graph, plan) -> tuple[str, ...]:
    pruned = set(plan.pruned_groups())
    return tuple(g.id for g in graph.groups if g.id in pruned and g.exact)


def _deepcopy_masked_outputs(model, x, graph, plan, exact) -> list[torch.Tensor]:
    """The reference the masked state replaces: a deep copy with the consumer-side weights zeroed in place."""
    masked = copy.deepcopy(model)
    state = dict(masked.named_parameters(remove_duplicate=False)) | dict(masked.named_buffers(remove_duplicate=False))
    with torch.no_grad():
        for group in (graph.group(g) for g in exact):
            dropped = np.setdiff1d(np.arange(group.size), np.asarray(plan.keep[group.id]))
            for member in group.members:
                rows = np.flatnonzero(np.isin(member.positions, dropped))
                if member.role == ROLE_IN and rows.size and member.fqn in state:
                    state[member.fqn].index_fill_(member.axis, torch.as_tensor(rows), 0.0)
    return run_model(masked, x)


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


@pytest.mark.parametrize("name", ["cnn", "resnet20", "densenet", "vit"])
def test_masked_outputs_equal_the_deep_copy_reference(name: str) -> None:
    model, x, graph, plan, _ = _compressed(name)
    exact = _exact_pruned_groups(graph, plan)
    assert exact
    got, want = _masked_outputs(model, x, graph, plan, exact), _deepcopy_masked_outputs(model, x, graph, plan, exact)
    assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))


def test_masked_outputs_zero_a_tied_weight_under_every_name() -> None:
    model, ids = TiedEmbedding().eval(), torch.randint(0, 10, (2, 5))
    graph = structprune.analyze(model, ids)
    plan = structprune.select(model, ids, graph, ratio=0.5)
    exact = _exact_pruned_groups(graph, plan)
    state = _masked_state(model, graph, plan, exact)
    assert state["out.weight"] is state["embed.weight"]
    assert int((state["out.weight"] == 0).all(dim=0).sum()) == 4  # half of the 8 hidden columns zeroed
    got, want = _masked_outputs(model, ids, graph, plan, exact), _deepcopy_masked_outputs(model, ids, graph, plan, exact)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_masked_outputs_leave_the_callers_model_untouched() -> None:
    model, x, graph, plan, _ = _compressed("resnet20")
    model.train()
    params = dict(model.named_parameters())
    before = {k: (v.clone(), v._version) for k, v in model.state_dict(keep_vars=True).items()}
    _masked_outputs(model, x, graph, plan, _exact_pruned_groups(graph, plan))
    assert model.training and all(m.training for m in model.modules())
    assert all(p is params[k] for k, p in model.named_parameters())
    for key, value in model.state_dict(keep_vars=True).items():
        assert torch.equal(value, before[key][0]) and value._version == before[key][1], key
