"""Artifacts are exported for deployment (eval mode, free batch/sequence axes) and read back before
they are trusted: `.pt2`, `state_dict.pt`, `plan.json`; plus the quality gate's measurability."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import models_zoo
from structprune.api import apply_plan, compress
from structprune.artifacts import (
    AtFixedBatch,
    Written,
    artifacts_section,
    check_plan,
    check_pt2,
    check_state_dict,
    deployment_cases,
    onnx_check,
    published_accuracy,
    read_back,
)
from structprune.capture.deploy import export_for_deployment, save_pt2
from structprune.data import accuracy_unmeasurable, evaluate_accuracy
from structprune.errors import VerificationError
from structprune.io import atomic_torch_save, atomic_write_text
from structprune.selection import Plan


class BatchNormNet(nn.Module):
    """Conv + BatchNorm: in training mode its output depends on the other rows of the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class StaticBatchNet(nn.Module):
    """Reshapes with a literal batch of 2, so it only runs at batch 2."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(2, 4))


def _trained_bn_net() -> BatchNormNet:
    torch.manual_seed(0)
    net = BatchNormNet()
    with torch.no_grad():
        net(torch.randn(16, 1, 6, 6) * 3 + 1)  # running statistics move away from (0, 1)
    return net


def test_pt2_of_a_training_mode_model_is_exported_in_eval_mode(tmp_path: Path) -> None:
    net = _trained_bn_net().train()
    saved = save_pt2(net, torch.randn(1, 1, 6, 6), tmp_path / "m.pt2")
    assert net.training and all(m.training for m in net.modules())  # the caller's flags are untouched
    loaded = torch.export.load(saved.path).module()  # as a user loads it: no .eval()
    x = torch.randn(5, 1, 6, 6)
    with torch.no_grad():
        expected = net.eval()(x)
        torch.testing.assert_close(loaded(x), expected)
        torch.testing.assert_close(loaded(x[:1]), expected[:1])  # batch 1 works and is not batch-normalised
    assert saved.dynamic_batch and not saved.has_tokens


def test_token_inputs_get_a_free_sequence_axis() -> None:
    model = models_zoo.create("bert").eval()
    example = models_zoo.example_inputs("bert", batch=1, seed=0)
    deployed = export_for_deployment(model, example)
    assert deployed.has_tokens and deployed.dynamic_batch and deployed.dynamic_sequence
    shorter = {k: v[:, :-2].repeat(3, 1) for k, v in example.items()}
    with torch.no_grad():
        torch.testing.assert_close(deployed.program.module()(**shorter), model(**shorter))


def test_a_model_that_only_runs_at_its_batch_exports_a_static_batch(tmp_path: Path) -> None:
    net = StaticBatchNet().eval()
    saved = save_pt2(net, torch.randn(2, 2, 2), tmp_path / "static.pt2")
    assert not saved.dynamic_batch
    assert list(deployment_cases(saved)) == ["batch 2 (static)"]
    assert check_pt2(saved.path, net, saved).ok


def test_fixed_batch_runner_pads_the_last_chunk() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(4, 3)
    only_three = lambda x: linear(x) if x.shape[0] == 3 else (_ for _ in ()).throw(RuntimeError("batch"))  # noqa: E731
    wrapped = AtFixedBatch(_Lambda(only_three), 3)
    x = torch.randn(7, 4)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), linear(x))


class _Lambda(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def test_pt2_check_catches_an_archive_of_another_model(tmp_path: Path) -> None:
    net = _trained_bn_net().eval()
    other = _trained_bn_net().eval()
    with torch.no_grad():
        other.body[0].weight.mul_(1.5)
    saved = save_pt2(other, torch.randn(1, 1, 6, 6), tmp_path / "m.pt2")
    check = check_pt2(saved.path, net, saved)
    assert not check.ok and check.max_abs_error > 1e-3 and check.checked_at == ("batch 2", "batch 3")
    with pytest.raises(VerificationError, match=r"model\.pt2: outputs differ"):
        artifacts_section([check])


def _pruned_cnn():
    model = models_zoo.create("cnn", in_chans=1, image_size=8).eval()
    example = torch.randn(1, 1, 8, 8)
    return model, example, compress(model, example, ratio=0.5)


def test_state_dict_check_rebuilds_the_architecture_and_catches_tampering(tmp_path: Path) -> None:
    model, example, result = _pruned_cnn()
    path = atomic_torch_save(result.model.state_dict(), tmp_path / "state_dict.pt")
    rebuild = lambda: apply_plan(models_zoo.create("cnn", in_chans=1, image_size=8), example, result.plan,  # noqa: E731
                                 verify=False)
    good = check_state_dict(path, result.model, example, rebuild)
    assert good.ok and good.max_abs_error == 0.0 and good.checked_at == ("batch 1", "batch 2")
    state = result.model.state_dict()
    state["fc1.weight"] = state["fc1.weight"] + 1e-3
    atomic_torch_save(state, path)
    bad = check_state_dict(path, result.model, example, rebuild)
    assert not bad.ok and bad.detail == "tensor fc1.weight differs from the pruned model's"


def test_plan_check_and_read_back_section(tmp_path: Path) -> None:
    model, example, result = _pruned_cnn()
    atomic_write_text(tmp_path / "plan.json", result.plan.to_json())
    atomic_torch_save(result.model.state_dict(), tmp_path / "state_dict.pt")
    saved = save_pt2(result.model, example, tmp_path / "model.pt2")
    section = read_back(tmp_path, Written(result.model, result.plan, saved, None, None))
    assert set(section) == {"plan.json", "state_dict.pt", "model.pt2"}
    assert all(row["ok"] for row in section.values())
    assert section["model.pt2"]["max_abs_error"] < 1e-5
    other = Plan({**result.plan.keep, next(iter(result.plan.keep)): (0,)}, result.plan.sizes)
    assert not check_plan(tmp_path / "plan.json", other).ok


def _loader(x: torch.Tensor, *rest: torch.Tensor) -> DataLoader:
    return DataLoader(TensorDataset(x, *rest), batch_size=4)


@pytest.mark.parametrize("loader, reason", [
    (None, "the data has no validation split"),
    (_loader(torch.randn(8, 4)), "the validation batches carry no labels"),
    (_loader(torch.randn(8, 4), torch.randn(8)), "the labels are not class indices"),
    (_loader(torch.randn(8, 4), torch.tensor([0, 1, 2, 9] * 2)), "labels go up to 9 but the model has 3 outputs"),
])
def test_accuracy_unmeasurable_says_why(loader, reason: str) -> None:
    assert accuracy_unmeasurable(nn.Linear(4, 3), loader).startswith(reason)


def test_accuracy_is_measurable_without_a_declared_class_count() -> None:
    loader = DataLoader([{"x": torch.randn(4), "labels": torch.tensor(1)} for _ in range(6)], batch_size=3)
    assert accuracy_unmeasurable(_KeywordNet(), loader) == ""
    assert evaluate_accuracy(_KeywordNet(), loader) == 100.0


class _KeywordNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.ones(len(x), dtype=torch.long), 3).float()


def test_published_accuracy_reads_the_archive(tmp_path: Path) -> None:
    net = _trained_bn_net()
    x, y = torch.randn(10, 1, 6, 6), torch.arange(10) % 3
    saved = save_pt2(net.train(), x[:1], tmp_path / "m.pt2")
    loader = _loader(x, y)
    assert published_accuracy(saved.path, saved, loader, net) == pytest.approx(evaluate_accuracy(net, loader))
    keyword_loader = DataLoader([{"x": x[i], "labels": y[i]} for i in range(10)], batch_size=4)
    assert published_accuracy(saved.path, saved, keyword_loader, net) == pytest.approx(evaluate_accuracy(net, loader))


def test_onnx_of_token_inputs_has_a_free_sequence_axis(tmp_path: Path) -> None:
    from structprune.api import export

    model = models_zoo.create("bert").eval()
    example = models_zoo.example_inputs("bert", batch=1, seed=0)
    pruned = compress(model, example, ratio=0.5).model
    section = export(pruned, example, tmp_path / "bert.onnx")
    assert section["dynamic_batch"] and section["dynamic_sequence"]
    assert section["parity"]["ok"] and section["parity"]["sequence_checked"]
    check = onnx_check(section["parity"])
    assert check.ok and check.checked_at[-1] == "sequence - 1"


def test_a_nan_in_the_outputs_fails_masking_equivalence() -> None:
    from structprune.verify.verify import _relative_error

    reference, pruned = [torch.tensor([1.0, float("nan")])], [torch.tensor([1.0, 2.0])]
    assert _relative_error(reference, pruned) == float("inf")
    assert _relative_error([torch.tensor([1.0, 2.0])], [torch.tensor([1.0, 2.5])]) == pytest.approx(0.5 / 3)
