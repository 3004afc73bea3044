"""The two forwards verification compares, computed without materialised copies of the model: the masked
dense reference (consumer weights zeroed when read) gives the outputs of a deep copy zeroed in place,
holding one masked copy at a time; the pruned outputs (tensors sliced when read) give the built
rewrite's. Tied tensors, reads that escape torch-function dispatch (TorchScript), and the caller's model,
left untouched."""
from __future__ import annotations

import copy
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import models_zoo
import structprune
import structprune.rewrite.apply as rewrite_apply
import structprune.verify.verify as verify_module
from helpers import TiedEmbedding
from structprune.data.running import eval_outputs as run_model
from structprune.data.running import normalize_inputs
from structprune.ir.roles import ROLE_IN
from structprune.rewrite import ReplacedOnRead, rewrite_model, sliced_on_read
from structprune.selection import Plan


def _setup(name: str):
    torch.manual_seed(0)
    model, x = models_zoo.create(name).eval(), models_zoo.example_inputs(name)
    graph = structprune.analyze(model, x)
    return model, x, graph, structprune.select(model, x, graph, ratio=0.5)


def _exact_only(graph, plan) -> tuple[Plan, tuple[str, ...]]:
    """The plan verification's masking check compares against: pruned in exact groups only."""
    exact = tuple(g.id for g in graph.groups if g.id in set(plan.pruned_groups()) and g.exact)
    keep = {g: (plan.keep[g] if g in exact else tuple(range(plan.sizes[g]))) for g in plan.keep}
    return Plan(keep, plan.sizes, plan.meta), exact


def _state(model: nn.Module) -> dict:
    return {k: (v.clone(), v._version) for k, v in model.state_dict(keep_vars=True).items()}


def _assert_untouched(model: nn.Module, before: dict) -> None:
    for key, value in model.state_dict(keep_vars=True).items():
        assert torch.equal(value, before[key][0]) and value._version == before[key][1], key


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


class _LiveCopies:
    """Wraps a function that returns new tensors; records the most of its results (with data: meta
    tensors hold none) alive at once."""

    def __init__(self, fn) -> None:
        self.fn, self.alive, self.most, self.calls = fn, [], 0, 0

    def __call__(self, *args, **kwargs):
        out = self.fn(*args, **kwargs)
        self.alive = [r for r in self.alive if r() is not None] + ([] if out.is_meta else [weakref.ref(out)])
        self.most, self.calls = max(self.most, len(self.alive)), self.calls + 1
        return out


def test_replaced_on_read_feeds_the_replacement_to_every_call_and_its_views() -> None:
    weight, other = nn.Parameter(torch.ones(2, 3)), torch.full((2,), 5.0)
    with ReplacedOnRead({id(weight): (weight, lambda: torch.zeros(2, 3))}), torch.no_grad():
        reads = [weight.sum(), weight.T.sum(), weight[0].sum(), (weight * 2).sum(),
                 nn.functional.linear(torch.ones(1, 3), weight).sum(), other.sum()]
    assert [float(r) for r in reads] == [0.0, 0.0, 0.0, 0.0, 0.0, 10.0]
    assert float(weight.detach().sum()) == 6.0 and weight._version == 0


@pytest.mark.parametrize("name", ["cnn", "resnet20", "densenet", "vit"])
def test_masked_outputs_equal_the_deep_copy_reference(name: str) -> None:
    model, x, graph, plan = _setup(name)
    _, exact = _exact_only(graph, plan)
    assert exact
    got = verify_module._masked_outputs(model, x, graph, plan, exact)
    want = _deepcopy_masked_outputs(model, x, graph, plan, exact)
    assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))


def test_masked_outputs_zero_a_tied_weight_under_every_name() -> None:
    model, ids = TiedEmbedding().eval(), torch.randint(0, 10, (2, 5))
    graph = structprune.analyze(model, ids)
    plan = structprune.select(model, ids, graph, ratio=0.5)
    _, exact = _exact_only(graph, plan)
    state = verify_module._masked_state(model, graph, plan, exact)
    assert state["out.weight"] is state["embed.weight"]
    assert int((state["out.weight"] == 0).all(dim=0).sum()) == 4  # half of the 8 hidden columns zeroed
    got = verify_module._masked_outputs(model, ids, graph, plan, exact)
    want = _deepcopy_masked_outputs(model, ids, graph, plan, exact)
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_masked_outputs_leave_the_callers_model_untouched() -> None:
    model, x, graph, plan = _setup("resnet20")
    model.train()
    params = dict(model.named_parameters())
    before = _state(model)
    verify_module._masked_outputs(model, x, graph, plan, _exact_only(graph, plan)[1])
    assert model.training and all(m.training for m in model.modules())
    assert all(p is params[k] for k, p in model.named_parameters())
    _assert_untouched(model, before)


@pytest.mark.parametrize("name", ["resnet20", "densenet", "convnext", "vit"])
def test_masked_outputs_equal_the_masked_state_and_hold_one_masked_copy_at_a_time(name, monkeypatch) -> None:
    model, x, graph, plan = _setup(name)
    restricted, exact = _exact_only(graph, plan)
    state = verify_module._masked_state(model, graph, restricted, exact)
    args, kwargs = normalize_inputs(x)
    with torch.no_grad():
        want = torch.func.functional_call(model, state, args, kwargs, tie_weights=True, strict=False)
    counter = _LiveCopies(verify_module._zeroed)
    monkeypatch.setattr(verify_module, "_zeroed", counter)
    before = _state(model)
    got = verify_module._masked_outputs(model, x, graph, restricted, exact)
    assert len(got) == 1 and torch.equal(got[0], want)
    assert counter.calls >= len({id(t) for t in state.values()}) > 1
    assert counter.most <= 2  # never a masked copy of every consumer tensor at once
    _assert_untouched(model, before)


@pytest.mark.parametrize("name", ["convnext", "vit", "bert"])
def test_sliced_on_read_runs_like_the_built_rewrite_without_holding_the_slices(name, monkeypatch) -> None:
    model, x, graph, plan = _setup(name)
    restricted, _ = _exact_only(graph, plan)
    assert restricted != plan  # these models have inexact groups, so verification runs this forward
    want = run_model(rewrite_model(model, graph, restricted), x)
    counter = _LiveCopies(rewrite_apply._sliced)
    monkeypatch.setattr(rewrite_apply, "_sliced", counter)
    before, own = _state(model), {id(t) for t in (*model.parameters(), *model.buffers())}
    with sliced_on_read(model, graph, restricted) as lazy:
        got = run_model(lazy, x)
    stand_ins = [t for t in (*lazy.parameters(), *lazy.buffers()) if id(t) not in own]
    assert stand_ins and all(t.untyped_storage().nbytes() == t.element_size() and t.isnan().all() for t in stand_ins)
    assert all(torch.equal(g, w) for g, w in zip(got, want)) and len(got) == len(want)
    assert counter.most <= 3  # one call's slices at a time
    _assert_untouched(model, before)


def test_sliced_on_read_slices_a_tied_tensor_by_each_of_its_names() -> None:
    model, ids = TiedEmbedding().eval(), torch.randint(0, 10, (2, 5))
    graph = structprune.analyze(model, ids)
    plan = structprune.select(model, ids, graph, ratio=0.5)
    with sliced_on_read(model, graph, plan) as lazy:
        got = run_model(lazy, ids)
    assert lazy.out.weight is lazy.embed.weight and lazy.out.weight.isnan().all()  # one stand-in
    assert torch.equal(got[0], run_model(rewrite_model(model, graph, plan), ids)[0])


@torch.jit.script
def _scripted_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return x @ weight.t() + bias


class _ScriptedLinear(nn.Linear):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return _scripted_linear(h, self.weight, self.bias)


def test_pruned_outputs_fall_back_to_a_built_copy_when_a_read_escapes_torch_calls() -> None:
    """TorchScript reads tensors without torch-function dispatch: the stand-in would leak, so the
    throwaway copy is built instead and the outputs are those of the built rewrite."""
    model, x, graph, plan = _setup("mlp")
    [m for m in model.modules() if isinstance(m, nn.Linear)][-1].__class__ = _ScriptedLinear
    got = verify_module._pruned_outputs(model, x, graph, plan)
    want = run_model(rewrite_model(model, graph, plan), x)
    assert torch.equal(got[0], want[0]) and torch.isfinite(got[0]).all()


def test_masking_check_confirms_a_failure_on_masked_copies_before_reporting_it() -> None:
    """A consumer weight read by TorchScript is unmasked on read; the check measures again against
    masked copies swapped into the module (what a TorchScript call then receives) and passes."""
    model, x, graph, plan = _setup("mlp")
    [m for m in model.modules() if isinstance(m, nn.Linear)][-1].__class__ = _ScriptedLinear
    pruned = rewrite_model(model, graph, plan)
    _, exact = _exact_only(graph, plan)
    on_read = verify_module._masked_outputs(model, x, graph, plan, exact)
    assert verify_module._relative_error(on_read, run_model(pruned, x)) > verify_module.RTOL
    verdict = structprune.verify.verify_rewrite(model, pruned, x, graph, plan, recapture=False)
    assert verdict.ok and "masking_equivalence" in [c.name for c in verdict.checks]
    assert verdict.masking_error <= verify_module.RTOL
