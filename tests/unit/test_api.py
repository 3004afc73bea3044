"""The public API: input validation with useful messages, plan validation, plan replay, the input
forms compress accepts, capture and verification failures, and the no-mutation guarantee."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import models_zoo
import structprune
from helpers import BakedWidth, TiedEmbedding, assert_state_equal, outputs, snapshot_state
from structprune import CaptureError, Plan, PlanError, VerificationError
from structprune.errors import UsageError

X = torch.randn(2, 4, generator=torch.Generator().manual_seed(2))


def mlp() -> nn.Sequential:
    """Hidden groups '0.weight:0' (8) and '2.weight:0' (6)."""
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2)).eval()


# ---- ratio / criterion validation ------------------------------------------------------------------

@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, float("nan"), "0.5", None])
def test_ratio_outside_zero_one_is_a_value_error_naming_the_range(ratio) -> None:
    with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\)") as info:
        structprune.compress(mlp(), X, ratio=ratio)
    assert isinstance(info.value, PlanError) and repr(ratio) in str(info.value)


def test_select_validates_ratio_too() -> None:
    net = mlp()
    graph = structprune.analyze(net, X)
    with pytest.raises(PlanError, match=r"\[0, 1\)"):
        structprune.select(net, X, graph, ratio=1.0)


def test_unknown_criterion_lists_the_choices() -> None:
    with pytest.raises(ValueError, match="unknown criterion 'l3'; choose one of: .*bn_scale.*l1, l2.*random"):
        structprune.compress(mlp(), X, criterion="l3")


@pytest.mark.parametrize("criterion", ["taylor", "spectral"])
def test_a_labelled_criterion_on_unlabelled_batches_is_a_usage_error(criterion: str) -> None:
    """It was a PlanError calling itself 'a structprune bug ... please report it'."""
    unlabelled = [{"x": torch.randn(8, 4)} for _ in range(2)]
    with pytest.raises(UsageError, match=f"criterion '{criterion}' needs labelled data.*obs, dropnet") as info:
        structprune.compress(mlp(), X, criterion=criterion, data=unlabelled)
    assert "structprune bug" not in str(info.value)


def test_bad_example_inputs_type_is_explained() -> None:
    with pytest.raises(ValueError, match="example_inputs must be a tensor, a tuple of tensors or a dict"):
        structprune.analyze(mlp(), "not a tensor")


# ---- plan validation -----------------------------------------------------------------------------------

def full_plan(net: nn.Module, x=X) -> Plan:
    graph = structprune.analyze(net, x)
    return Plan({g.id: tuple(range(g.size)) for g in graph.groups}, {g.id: g.size for g in graph.groups})


def test_plan_naming_an_unknown_group_is_rejected_by_name() -> None:
    plan = Plan({"fc9.weight:0": (0,)}, {"fc9.weight:0": 4})
    with pytest.raises(PlanError, match="plan names unknown group 'fc9.weight:0'; .*0.weight:0") as info:
        structprune.apply_plan(mlp(), X, plan)
    assert isinstance(info.value, ValueError)


def test_plan_with_wrong_sizes_belongs_to_another_architecture() -> None:
    plan = Plan({"0.weight:0": (0, 1)}, {"0.weight:0": 16})
    with pytest.raises(PlanError, match="group '0.weight:0' has 8 channels but the plan was made for 16"):
        structprune.apply_plan(mlp(), X, plan)


def test_plan_with_empty_keep_is_rejected() -> None:
    plan = Plan({"0.weight:0": ()}, {"0.weight:0": 8})
    with pytest.raises(PlanError, match="plan keeps no channel of group '0.weight:0'"):
        structprune.apply_plan(mlp(), X, plan)


@pytest.mark.parametrize("kept", [(0, 8), (-1, 2), (1, 1, 2)])
def test_plan_with_out_of_range_or_repeated_indices_is_rejected(kept) -> None:
    plan = Plan({"0.weight:0": kept}, {"0.weight:0": 8})
    with pytest.raises(PlanError, match=r"indices outside 0\.\.7 or repeats"):
        structprune.apply_plan(mlp(), X, plan)


def test_plan_pruning_a_blocked_group_is_rejected_with_the_reason() -> None:
    plan = Plan({"4.weight:0": (0,)}, {"4.weight:0": 2})
    with pytest.raises(PlanError, match="plan prunes blocked group '4.weight:0' .*model output"):
        structprune.apply_plan(mlp(), X, plan)


def test_plan_json_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="not a structprune plan"):
        Plan.from_json("[1, 2]")
    with pytest.raises(ValueError, match="unsupported plan format 7"):
        Plan.from_json(json.dumps({"format": 7, "keep": {}, "sizes": {}}))
    with pytest.raises(ValueError, match="not a structprune plan"):
        Plan.from_json("{not json")


def test_partial_plan_prunes_only_the_named_group() -> None:
    net = mlp()
    pruned = structprune.apply_plan(net, X, Plan({"2.weight:0": (1, 4)}, {"2.weight:0": 6}))
    assert (pruned[0].out_features, pruned[2].out_features, pruned[4].in_features) == (8, 2, 2)
    assert torch.equal(pruned[2].weight, net[2].weight.detach()[[1, 4]])
    assert torch.equal(pruned[4].weight, net[4].weight.detach()[:, [1, 4]])


# ---- plan replay ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet20", "csp", "bert"])
def test_saved_plan_reapplied_reproduces_the_compressed_model(name: str, tmp_path) -> None:
    net = models_zoo.create(name).eval()
    x = models_zoo.example_inputs(name)
    result = structprune.compress(net, x, ratio=0.5, global_pruning=True)
    path = tmp_path / "plan.json"
    path.write_text(result.plan.to_json())
    loaded = Plan.load(path)
    assert loaded == result.plan and hash(loaded) == hash(result.plan)

    replayed = structprune.apply_plan(net, x, loaded)
    assert_state_equal(replayed.state_dict(), result.model.state_dict())
    assert torch.equal(outputs(replayed, x), outputs(result.model, x))
    again = structprune.apply_plan(net, x, loaded, graph=result.graph, verify=False)
    assert_state_equal(again.state_dict(), result.model.state_dict())


def test_plan_json_is_plain_sorted_data() -> None:
    result = structprune.compress(mlp(), X, ratio=0.5)
    data = json.loads(result.plan.to_json())
    assert data["format"] == 1
    assert data["sizes"] == {"0.weight:1": 4, "0.weight:0": 8, "2.weight:0": 6, "4.weight:0": 2}
    assert all(v == sorted(v) for v in data["keep"].values())
    assert data["meta"]["criterion"] == "l2" and data["meta"]["ratio"] == 0.5


# ---- inputs: tensor, tuple, dict ------------------------------------------------------------------------

class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.fc = nn.Linear(4, 8), nn.Linear(3, 8), nn.Linear(8, 2)

    def forward(self, x, y):
        return self.fc(torch.relu(self.a(x) + self.b(y)))


class KeywordInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.fc = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x, scale=None):
        h = torch.relu(self.a(x))
        return self.fc(h if scale is None else h * scale)


@pytest.mark.parametrize("form", ["tensor", "tuple", "list", "dict", "dict_with_mask", "zoo_dict"])
def test_example_input_forms(form: str) -> None:
    if form == "tensor":
        net, x = mlp(), X
    elif form in ("tuple", "list"):
        net, x = TwoInputs().eval(), (X, torch.randn(2, 3))
        x = list(x) if form == "list" else x
    elif form == "dict":
        net, x = KeywordInputs().eval(), {"x": X}
    elif form == "dict_with_mask":
        net, x = KeywordInputs().eval(), {"x": X, "scale": torch.rand(2, 1)}
    else:
        net, x = models_zoo.create("bert").eval(), models_zoo.example_inputs("bert")
    dense = outputs(net, x)
    result = structprune.compress(net, x, ratio=0.5)
    assert result.report.verification["ok"]
    assert result.report.params_after < result.report.params_before
    assert outputs(result.model, x).shape == dense.shape


def test_two_input_model_prunes_the_shared_sum_group() -> None:
    result = structprune.compress(TwoInputs().eval(), (X, torch.randn(2, 3)), ratio=0.5)
    assert result.model.a.out_features == result.model.b.out_features == result.model.fc.in_features == 4


# ---- failures: capture and verification ---------------------------------------------------------------

class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


class Outer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pre, self.block, self.head = nn.Linear(4, 4), DataDependent(), nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.block(self.pre(x)))


def test_capture_failure_names_the_module_and_suggests_a_fix() -> None:
    with pytest.raises(CaptureError) as info:
        structprune.compress(Outer().eval(), X)
    message = str(info.value)
    assert message.startswith("[capture] torch.export could not capture Outer in module 'block'")
    assert "data-dependent Python control flow" in message and "ignore=" in message
    with pytest.raises(CaptureError, match="in module 'block'"):
        structprune.analyze(Outer().eval(), X)



def test_a_rewrite_that_fails_verification_is_not_returned() -> None:
    x = torch.randn(2, 5, 12)
    with pytest.raises(VerificationError, match="failed verification and is not returned: recapture"):
        structprune.compress(BakedWidth().eval(), x, ratio=0.5, strict=True)
    result = structprune.compress(BakedWidth().eval(), x, ratio=0.5)  # the group the view reads is kept whole
    assert result.report.verification["ok"] and result.model.q.out_features == 12
    assert result.plan.meta["blocked_by_verification"] == {
        "q.weight:0": "verification_failed: reshape to sizes that follow the pruned width: not so in the model's code"}


# ---- the caller's model, reports, determinism ------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False])
def test_compress_never_mutates_the_callers_model(training: bool) -> None:
    net = models_zoo.create("vgg").train(training)
    x = models_zoo.example_inputs("vgg")
    before = snapshot_state(net)
    result = structprune.compress(net, x, ratio=0.5)
    assert net.training is training and result.model.training is training
    assert_state_equal(net.state_dict(), before)
    assert result.model is not net
    assert all(p.data_ptr() not in {q.data_ptr() for q in net.parameters()} for p in result.model.parameters())



def test_tied_weights_are_analysed_as_one_tensor() -> None:
    graph = structprune.analyze(TiedEmbedding().eval(), torch.randint(0, 10, (2, 5)))
    hidden = [g for g in graph.prunable if any(m.ref == "hidden.weight:0" for m in g.members)]
    assert len(hidden) == 1 and hidden[0].size == 8
    assert {"hidden.weight:1", "hidden.weight:0"} <= {m.ref for m in hidden[0].members}


def test_tied_weights_compress_and_stay_tied() -> None:
    ids = torch.randint(0, 10, (2, 5))
    result = structprune.compress(TiedEmbedding().eval(), ids, ratio=0.5)
    model = result.model
    assert model.out.weight is model.embed.weight and model.embed.weight.shape == (10, 4)
    assert outputs(model, ids).shape == (2, 5, 10)


def test_report_is_json_and_consistent_with_the_models() -> None:
    net = models_zoo.create("cnn").eval()
    x = models_zoo.example_inputs("cnn")
    result = structprune.compress(net, x, ratio=0.5)
    data = json.loads(json.dumps(result.report.to_json()))
    assert data["params"]["before"] == sum(p.numel() for p in net.parameters())
    assert data["params"]["after"] == sum(p.numel() for p in result.model.parameters())
    assert data["macs"]["after"] < data["macs"]["before"]
    assert data["verification"]["ok"] is True
    rows = {row["id"]: row for row in data["groups"]}
    assert rows["fc1.weight:0"]["size"] == 120 and rows["fc1.weight:0"]["kept"] == 60
    assert rows["fc2.weight:0"]["prunable"] is False and "model output" in rows["fc2.weight:0"]["why"]
    assert result.graph.group("fc1.weight:0").size == 120


def test_same_inputs_same_plan_and_model() -> None:
    net = models_zoo.create("vgg").eval()
    x = models_zoo.example_inputs("vgg")
    first = structprune.compress(net, x, ratio=0.4, global_pruning=True)
    second = structprune.compress(net, x, ratio=0.4, global_pruning=True)
    assert first.plan == second.plan
    assert_state_equal(first.model.state_dict(), second.model.state_dict())


def test_pruned_weights_are_slices_of_the_original() -> None:
    net = mlp()
    result = structprune.compress(net, X, ratio=0.5)
    k0, k2 = list(result.plan.keep["0.weight:0"]), list(result.plan.keep["2.weight:0"])
    assert torch.equal(result.model[0].weight, net[0].weight.detach()[k0])
    assert torch.equal(result.model[2].weight, net[2].weight.detach()[k2][:, k0])
    assert torch.equal(result.model[4].weight, net[4].weight.detach()[:, k2])
    assert torch.equal(result.model[4].bias, net[4].bias.detach())
