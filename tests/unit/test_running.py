"""The one place that runs a model (`structprune.data.running`) and reads batches (`structprune.data.batches`):
input forms, the logits rule every stage shares, eval mode, device moves, batch trimming, hooks."""
from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from structprune.data.batches import batch_size_of, calibration_batches, split_batch, take_first, to_device
from structprune.data.running import (
    call_model,
    eval_mode,
    eval_outputs,
    find_logits,
    forward_hooks,
    forward_inputs,
    logits_of,
    model_device,
    model_logits,
    normalize_inputs,
)
from structprune.errors import UsageError


class TwoInputs(nn.Module):
    """Adds its two inputs after a linear layer; takes them positionally or by keyword."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.linear(x + y)


class Returning(nn.Module):
    """Returns whatever `wrap(logits)` builds, so one test can try every output form."""

    def __init__(self, wrap) -> None:
        super().__init__()
        self.linear, self.wrap = nn.Linear(3, 2), wrap

    def forward(self, x: torch.Tensor):
        return self.wrap(self.linear(x))


class ModelOutputLike(OrderedDict):
    """What Hugging Face returns: a dict that also has the fields as attributes (loss comes first)."""

    def __getattr__(self, name):
        return self[name]


@dataclass
class WithLogits:
    logits: torch.Tensor


def test_tensor_tuple_and_dict_inputs_call_the_model_the_same_way() -> None:
    torch.manual_seed(0)
    model, x, y = TwoInputs(), torch.randn(4, 3), torch.randn(4, 3)
    want = model(x, y)
    assert torch.equal(call_model(model, (x, y)), want)
    assert torch.equal(call_model(model, [x, y]), want)
    assert torch.equal(call_model(model, {"x": x, "y": y}), want)
    assert torch.equal(call_model(nn.Identity(), x), x)
    assert normalize_inputs(x) == ((x,), {})


def test_example_inputs_of_another_kind_are_refused_with_what_is_accepted() -> None:
    with pytest.raises(ValueError, match="example_inputs must be a tensor, a tuple of tensors or a dict"):
        normalize_inputs("not a tensor")


@pytest.mark.parametrize("wrap", [
    lambda t: t,
    lambda t: (t, torch.zeros(1)),
    lambda t: [t],
    lambda t: {"logits": t, "hidden": torch.zeros(1)},
    lambda t: ModelOutputLike(loss=torch.zeros(()), logits=t),
    lambda t: WithLogits(t),
], ids=["tensor", "tuple", "list", "dict", "model_output", "attribute"])
def test_every_stage_reads_the_same_logits_from_every_output_form(wrap) -> None:
    torch.manual_seed(0)
    model, x = Returning(wrap), torch.randn(4, 3)
    want = model.linear(x)
    assert torch.equal(model_logits(model, x), want)
    assert torch.equal(logits_of(model(x)), want)


@pytest.mark.parametrize("output, named", [
    ({"hidden": torch.zeros(1)}, "dict with keys ['hidden']"),
    (((torch.zeros(1),),), "tuple of ['tuple']"),
    ((), "tuple of []"),
    (None, "NoneType"),
])
def test_an_output_without_logits_is_an_error_that_names_what_was_returned(output, named) -> None:
    assert find_logits(output) is None
    with pytest.raises(TypeError, match=re.escape(f"cannot read logits from the model's output, a {named}: ")):
        logits_of(output)


def test_eval_outputs_flatten_in_eval_mode_without_grad_and_restore_training_flags() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.9), Returning(lambda t: {"a": t, "b": (t * 2, t * 3)}))
    model.train()
    model[1].eval()  # a submodule's own flag must come back as it was, not as the root's
    x = torch.ones(2, 3, requires_grad=True)
    outputs = eval_outputs(model, x)
    assert [tuple(t.shape) for t in outputs] == [(2, 2)] * 3
    assert torch.equal(outputs[1], outputs[0] * 2) and not outputs[0].requires_grad
    assert model.training and model[0].training and not model[1].training
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model[2].training and not model[1].training


def test_eval_mode_restores_flags_when_the_block_raises() -> None:
    model = nn.Sequential(nn.Linear(2, 2)).train()
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        raise RuntimeError("boom")
    assert model.training and model[0].training


def test_device_moves_follow_the_model_and_reach_nested_inputs() -> None:
    assert model_device(nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(nn.ReLU()) == torch.device("cpu")
    meta = nn.BatchNorm1d(2, affine=False).to("meta")  # buffers only: their device counts
    assert model_device(meta) == torch.device("meta")
    moved = to_device({"ids": (torch.zeros(2), 7), "mask": torch.ones(2)}, torch.device("meta"))
    assert moved["ids"][0].device.type == "meta" and moved["ids"][1] == 7 and moved["mask"].is_meta


def test_batches_split_size_and_trim_the_same_way_for_every_form() -> None:
    x, labels = torch.zeros(5, 3), torch.arange(5)
    assert split_batch({"input_ids": x, "labels": labels})[1] is labels
    assert split_batch((x,)) == (x, None)
    assert batch_size_of({"a": (torch.zeros(4, 1), torch.zeros(4))}) == 4
    assert batch_size_of(take_first((x, {"y": x}), 2)) == 2
    with pytest.raises(ValueError, match="holds no tensor"):
        batch_size_of({"a": 1})


def test_calibration_batches_stop_at_the_budget_move_to_the_device_and_check_labels() -> None:
    loader = [(torch.zeros(4, 3), torch.arange(4)), {"x": torch.ones(4, 3), "labels": torch.arange(4)}]
    batches = list(calibration_batches(loader, 6, torch.device("meta")))
    assert [b.size for b in batches] == [4, 2] and batches[1].x["x"].is_meta and len(batches[1].y) == 2
    assert [b.size for b in calibration_batches(loader, None)] == [4, 4]
    with pytest.raises(UsageError, match="scoring needs labelled data"):
        list(calibration_batches([torch.zeros(2, 3)], None, need_labels=True, who="scoring"))


def test_hooks_see_every_forward_of_a_loader_and_are_removed_afterwards() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU()).train()
    seen: list[tuple[int, ...]] = []
    loader = [(torch.randn(2, 3), torch.zeros(2))] * 3
    with forward_hooks(model, post={"1": lambda module, args, out: seen.append(tuple(out.shape))}):
        forward_inputs(model, loader, max_batches=2)
    assert seen == [(2, 3), (2, 3)] and model.training
    model(torch.randn(1, 3))
    assert len(seen) == 2 and not model[1]._forward_hooks
