"""Recovery: methods and epochs, resume after an interruption, dead-neuron rate, AP, iterative pruning,
the quality gate. Tiny MLPs on scikit-learn's digits (64 features) keep every test to seconds."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import structprune
from structprune.iterative import iterative_prune
from structprune.recover import (
    ActivateWhilePruning,
    DeadNeuronMeter,
    RecoveryConfig,
    ap_scores,
    channel_dead_rates,
    check_quality_gate,
    dead_neuron_rate,
    recover,
    scratch_b_epochs,
    silo_max_lr,
)

EXAMPLE = torch.zeros(2, 64)


def digits_loaders(seed: int = 0, batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    train, val = order[:1400], order[1400:]
    return (DataLoader(TensorDataset(x[train], y[train]), batch_size=batch_size, shuffle=True),
            DataLoader(TensorDataset(x[val], y[val]), batch_size=256))


def mlp(seed: int = 0, hidden: int = 32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is fastest, and immune to a busy shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def loaders() -> tuple[DataLoader, DataLoader]:
    return digits_loaders()


@pytest.fixture(scope="module")
def trained(loaders) -> nn.Module:
    config = RecoveryConfig(method="finetune", epochs=10, lr=0.1, schedule="cosine", progress=False)
    return recover(mlp(), *loaders, config).model


def cfg(**changes) -> RecoveryConfig:
    return RecoveryConfig(**{"epochs": 2, "lr": 0.05, "progress": False, **changes})


def test_finetune_recovers_accuracy_and_leaves_the_input_alone(loaders, trained) -> None:
    pruned = structprune.compress(trained, EXAMPLE, ratio=0.75).model
    before = [p.clone() for p in pruned.parameters()]
    result = recover(pruned, *loaders, cfg(method="finetune", epochs=3))
    assert result.method == "finetune" and result.epochs == 3 and len(result.history) == 3
    assert result.final_val_accuracy > result.initial_val_accuracy and result.final_val_accuracy > 85
    assert all(torch.equal(a, b) for a, b in zip(before, pruned.parameters()))
    assert [r.epoch for r in result.history] == [1, 2, 3]
    assert result.to_json()["history"][0]["lr"] == pytest.approx(result.history[0].lr)


def test_auto_means_distill_with_a_dense_model_and_finetune_without(loaders, trained) -> None:
    pruned = structprune.compress(trained, EXAMPLE, ratio=0.5).model
    assert recover(pruned, *loaders, cfg(epochs=1), dense=trained).method == "distill"
    assert recover(pruned, *loaders, cfg(epochs=1)).method == "finetune"
    with pytest.raises(ValueError, match="teacher"):
        recover(pruned, *loaders, cfg(method="distill"))


def test_distill_with_adamw_and_label_smoothing_trains(loaders, trained) -> None:
    pruned = structprune.compress(trained, EXAMPLE, ratio=0.75).model
    config = cfg(method="distill", optimizer="adamw", lr=1e-2, label_smoothing=0.1, distill_weight=0.7, temperature=2.0)
    result = recover(pruned, *loaders, config, dense=trained)
    assert result.final_val_accuracy > max(result.initial_val_accuracy + 10, 80)


def test_scratch_b_epoch_arithmetic() -> None:
    assert scratch_b_epochs(10, 4_000_000, 1_000_000) == 40
    assert scratch_b_epochs(30, 2_532_992, 635_712) == round(30 * 2_532_992 / 635_712)
    assert scratch_b_epochs(10, 400, 100, max_factor=2.0) == 20
    assert scratch_b_epochs(3, 10, 7) == 4


def test_scratch_methods_reinitialise_and_train_for_their_epochs(loaders, trained) -> None:
    pruned = structprune.compress(trained, EXAMPLE, ratio=0.5).model
    config = cfg(method="scratch-e", dense_epochs=2, epochs=99)
    scratch_e = recover(pruned, *loaders, config)
    assert scratch_e.epochs == 2 and scratch_e.notes["not_reinitialised"] == []
    scratch_b = recover(pruned, *loaders, dataclasses.replace(config, method="scratch-b", dense_epochs=1),
                        dense_macs=300, pruned_macs=100)
    assert scratch_b.epochs == 3 and scratch_b.notes["scratch_b_factor"] == 3.0
    assert scratch_b.to_json()["method"] == "scratch-b" and scratch_b.to_json()["epochs"] == 3
    with pytest.raises(ValueError, match="dense_macs"):
        recover(pruned, *loaders, dataclasses.replace(config, method="scratch-b"))


def test_allr_and_lrw_derive_their_lr_from_the_pruning_and_the_original_run(loaders, trained) -> None:
    pruned = structprune.compress(trained, EXAMPLE, ratio=0.5).model
    allr = recover(pruned, *loaders, cfg(method="finetune", schedule="allr", lr=0.1, epochs=1), before_pruning=trained)
    assert 0 < allr.base_lr <= 0.1 and 0 < allr.notes["allr"]["relative_norm_drop"] < 1
    lrw = recover(pruned, *loaders, cfg(method="finetune", schedule="lrw", lr=0.1, epochs=1, dense_epochs=4))
    assert lrw.history[0].lr == pytest.approx(0.1 * (1 + np.cos(np.pi * (4 * 22 - 1) / (4 * 22))) / 2)


class _Interrupt(Exception):
    pass


class _InterruptingLoader:
    """The training loader, raising after `stop_after` batches in total (a killed job)."""

    def __init__(self, loader: DataLoader, stop_after: int) -> None:
        self.loader, self.stop_after, self.seen = loader, stop_after, 0
        self.dataset, self.batch_size = loader.dataset, loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.seen == self.stop_after:
                raise _Interrupt()
            self.seen += 1
            yield batch


def test_resume_after_interruption_matches_an_uninterrupted_run(loaders, trained, tmp_path) -> None:
    train, val = loaders
    pruned = structprune.compress(trained, EXAMPLE, ratio=0.5).model
    config = cfg(method="finetune", epochs=4, seed=7, schedule="onecycle", checkpoint_dir=str(tmp_path / "run"))
    with pytest.raises(_Interrupt):
        recover(pruned, _InterruptingLoader(train, stop_after=2 * len(train) + 5), val, config)
    resumed = recover(pruned, train, val, dataclasses.replace(config, resume=True))
    straight = recover(pruned, train, val, dataclasses.replace(config, checkpoint_dir=str(tmp_path / "other")))
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(a, b)
    assert [r.to_json() for r in resumed.history] == [r.to_json() for r in straight.history]
    assert resumed.checkpoint.endswith("recovery-last.pt")


def test_a_checkpoint_of_another_run_is_refused(loaders, trained, tmp_path) -> None:
    pruned = structprune.compress(trained, EXAMPLE, ratio=0.5).model
    config = cfg(method="finetune", epochs=1, checkpoint_dir=str(tmp_path))
    recover(pruned, *loaders, config)
    with pytest.raises(ValueError, match="different settings.*lr"):
        recover(pruned, *loaders, dataclasses.replace(config, lr=0.2, resume=True))


def _constructed_layer() -> nn.Module:
    """Linear(2, 4) + ReLU with unit j computing x0·w_j: on x0 in {−1, +1} (half each), units 0 and 1
    (w = +1, −1) are dead half the time, unit 2 (w = 0, bias −1) always, unit 3 (bias +5) never."""
    layer = nn.Linear(2, 4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
        layer.bias.copy_(torch.tensor([0.0, 0.0, -1.0, 5.0]))
    return nn.Sequential(layer, nn.ReLU(), nn.Linear(4, 3))


def _pm_one_batches() -> list:
    x = torch.tensor([[1.0, 0.3], [-1.0, 0.3], [1.0, -2.0], [-1.0, 7.0]])
    return [(x, torch.zeros(4, dtype=torch.long))] * 3


def test_dead_neuron_rate_on_a_constructed_layer() -> None:
    rate = dead_neuron_rate(_constructed_layer(), _pm_one_batches())
    assert rate.per_layer == {"1": pytest.approx((0.5 + 0.5 + 1.0 + 0.0) / 4)}
    assert rate.total == pytest.approx(0.5) and rate.source == "relu-modules"


class _FunctionalNet(nn.Module):
    """The constructed layer with the ReLU called as a function (no module to hook)."""

    def __init__(self) -> None:
        super().__init__()
        layers = _constructed_layer()
        self.fc1, self.fc2 = layers[0], layers[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def test_dead_neuron_rate_with_functional_relu_reads_consumer_inputs() -> None:
    rate = dead_neuron_rate(_FunctionalNet(), _pm_one_batches())
    assert rate.source == "consumer-inputs"
    assert rate.per_layer == {"fc2": pytest.approx(0.5)}  # fc1 reads the model input: not an activation


def test_meter_removes_its_hooks_even_when_the_body_raises() -> None:
    net = _constructed_layer()
    with pytest.raises(RuntimeError):
        with DeadNeuronMeter(net):
            raise RuntimeError("boom")
    assert not net[1]._forward_hooks and not net._forward_pre_hooks


def test_channel_dead_rates_and_ap_scores() -> None:
    net = _constructed_layer()
    graph = structprune.analyze(net, torch.zeros(2, 2))
    from structprune.criteria.views import group_views
    views = group_views(graph, net)
    rates = channel_dead_rates(net, _pm_one_batches(), views)
    assert rates["0.weight:0"] == pytest.approx([0.5, 0.5, 1.0, 0.0])
    scores = ap_scores({"0.weight:0": np.array([1.0, 2.0, 3.0, 4.0])}, rates, share=0.02)
    assert int(np.argmin(scores["0.weight:0"])) == 2 and sorted(np.argsort(scores["0.weight:0"])[1:]) == [0, 1, 3]


def test_ap_criterion_removes_the_dead_channel_first() -> None:
    net = _constructed_layer()
    loader = _pm_one_batches()
    ap = structprune.compress(net, torch.zeros(2, 2), ratio=0.25, criterion=ActivateWhilePruning("l2"), data=loader)
    assert ap.plan.keep["0.weight:0"] == (0, 1, 3) and ap.plan.meta["criterion"] == "ap+l2"
    assert dead_neuron_rate(ap.model, loader).total < dead_neuron_rate(net, loader).total


def test_ap_changes_the_plan_where_magnitude_keeps_a_dead_channel() -> None:
    net = _constructed_layer()
    with torch.no_grad():
        net[0].bias[2] = -9.0  # large magnitude, always dead
        net[0].weight[3, 1] = 0.0
    plain = structprune.compress(net, torch.zeros(2, 2), ratio=0.25, criterion="l2")
    ap = structprune.compress(net, torch.zeros(2, 2), ratio=0.25, criterion=ActivateWhilePruning("l2"),
                              data=_pm_one_batches())
    assert 2 in plain.plan.keep["0.weight:0"] and 2 not in ap.plan.keep["0.weight:0"]


def test_ap_scores_leave_groups_without_dead_channels_alone() -> None:
    base = {"g": np.array([3.0, 1.0, 2.0])}
    assert np.array_equal(ap_scores(base, {"g": np.zeros(3)})["g"], base["g"])
    with pytest.raises(ValueError):
        ap_scores(base, {}, share=1.5)


def test_iterative_pruning_applies_each_plan_to_the_previous_model(loaders, trained) -> None:
    config = cfg(method="finetune", epochs=1, schedule="silo")
    out = iterative_prune(trained, EXAMPLE, *loaders, cycles=3, fraction=0.25, config=config)
    widths = [c.recovery.model[0].out_features for c in out.cycles]
    assert widths == [24, 18, 13]  # 32 -> 32 − 8 -> 24 − 6 -> 18 − 5 (4.5 of 18 rounds up)
    assert [c.plan.sizes["0.weight:0"] for c in out.cycles] == [32, 24, 18]
    assert [c.recovery.base_lr for c in out.cycles] == pytest.approx([silo_max_lr(c, 0.25) for c in (1, 2, 3)])
    assert out.cycles[1].recovery.base_lr == pytest.approx(0.03 + 0.04 / (1 + 3 ** 5))  # P = 0.25: odds 1/3
    assert len(out.history) == 3 and out.model is out.cycles[-1].recovery.model
    assert out.cycles[1].pruned_before == pytest.approx(0.25)


def test_iterative_resume_rebuilds_finished_cycles_from_their_plans(loaders, trained, tmp_path) -> None:
    config = cfg(method="finetune", epochs=1, schedule="llr", checkpoint_dir=str(tmp_path))
    first = iterative_prune(trained, EXAMPLE, *loaders, cycles=2, fraction=0.25, config=config)
    calls = []

    def counting_compress(*args, **kwargs):
        calls.append(1)
        return structprune.compress(*args, **kwargs)

    again = iterative_prune(trained, EXAMPLE, *loaders, cycles=3, fraction=0.25,
                            config=dataclasses.replace(config, resume=True), compress_fn=counting_compress)
    assert len(calls) == 1  # only the third cycle was computed
    assert again.plans[:2] == first.plans
    for a, b in zip(again.cycles[1].recovery.model.state_dict().values(), first.model.state_dict().values()):
        assert torch.equal(a, b)


def test_iterative_with_ap_and_allr_runs(loaders, trained) -> None:
    config = cfg(method="finetune", epochs=1, schedule="allr", lr=0.1)
    out = iterative_prune(trained, EXAMPLE, *loaders, cycles=2, fraction=0.25, config=config, ap_share=0.02)
    assert all(c.plan.meta["criterion"] == "ap+l2" for c in out.cycles)
    assert all(0 < c.recovery.base_lr <= 0.1 for c in out.cycles)
    assert all(r.dead_rate is not None for r in out.history)


@pytest.mark.parametrize("before, after, max_drop, ok", [
    (95.0, 95.0, 0.0, True), (95.0, 94.0, 1.0, True), (95.0, 93.9, 1.0, False), (90.0, 93.0, 0.0, True)])
def test_quality_gate(before: float, after: float, max_drop: float, ok: bool) -> None:
    passed, message = check_quality_gate(before, after, max_drop)
    assert passed is ok and ("passed" if ok else "FAILED") in message


def test_quality_gate_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError, match="percentages"):
        check_quality_gate(0.95, 194.0, 1.0)
    with pytest.raises(ValueError, match="max_drop"):
        check_quality_gate(95.0, 94.0, -1.0)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="schedule"):
        RecoveryConfig(schedule="exp")
    with pytest.raises(ValueError, match="distill_weight"):
        RecoveryConfig(distill_weight=2.0)
