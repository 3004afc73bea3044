"""A compress job runs its dense model on the calibration data once for obs's Hessians and again for the
refit's dense stream: the first pass records the stream readers' inputs and the refit reads them back, for
the same model, unchanged, and the same batches only, and with the same result as running the model again."""
from __future__ import annotations

import importlib

import pytest
import torch
from test_calibrate_units import Ffn, Mixing, Stack
from torch import nn

import structprune
from structprune.criteria.obs import StructuredOBS
from structprune.data.recording import RecordedData, Recording, recording_of


def _recorded(model, x, size=10, **options):
    recording = Recording(**options)
    recording.start(model, x)
    recording.keep("a", torch.ones(size))
    recording.keep("b", torch.zeros(size))
    recording.finish()
    return recording


def test_a_recording_is_read_back_for_equal_inputs_of_the_same_unchanged_model_only():
    net, x = nn.Linear(3, 2), {"ids": torch.arange(6).reshape(2, 3), "mask": torch.ones(2, 3)}
    recording = _recorded(net, x)
    again = recording.inputs_of(net, {k: v.clone() for k, v in x.items()}, ["a", "b"])
    assert torch.equal(again["a"], torch.ones(10)) and torch.equal(again["b"], torch.zeros(10))
    assert recording.inputs_of(net, {**x, "ids": x["ids"] + 1}, ["a"]) is None
    assert recording.inputs_of(net, x["ids"], ["a"]) is None  # another structure
    assert recording.inputs_of(net, x, ["a", "c"]) is None  # "c" was not recorded
    assert recording.inputs_of(nn.Linear(3, 2), x, ["a"]) is None  # another model
    with torch.no_grad():
        net.weight.add_(1.0)  # the same model, changed in place
    assert recording.inputs_of(net, x, ["a"]) is None


def test_a_batch_not_finished_or_past_the_budget_is_not_kept_nor_anything_after_it():
    net, x, y = nn.Linear(3, 2), torch.randn(2, 3), torch.randn(2, 3)
    recording = Recording()
    recording.start(net, x)
    recording.keep("a", torch.ones(4))  # a pass that stopped early: never finished
    assert recording.inputs_of(net, x, ["a"]) is None
    small = _recorded(net, x, size=10, max_bytes=60)  # 40 bytes fit, the second 40 do not
    assert small.inputs_of(net, x, ["a"]) is None and small.size == 0
    started = small.start(net, y)
    small.keep("a", torch.ones(1))
    small.finish()
    assert not started and small.inputs_of(net, y, ["a"]) is None


def test_compress_hands_its_data_wrapped_to_the_stages_and_clears_the_recording_after(monkeypatch):
    api = importlib.import_module("structprune.api")
    seen, recalibrate = [], api.recalibrate
    monkeypatch.setattr(api, "recalibrate", lambda *a, **k: seen.append(a[3]) or recalibrate(*a, **k))
    net, (x, loader) = Stack(Ffn).eval(), _data()
    structprune.compress(net, x[:2], ratio=0.5, criterion=StructuredOBS(hessian_samples=48), data=loader,
                         ignore=["inp*", "head*"])
    assert isinstance(seen[0], RecordedData) and seen[0].data is loader
    assert recording_of(seen[0]).size == 0 and recording_of(loader) is None


def test_compress_records_nothing_when_no_layer_is_refit(monkeypatch):
    api = importlib.import_module("structprune.api")
    seen, recalibrate = [], api.recalibrate
    monkeypatch.setattr(api, "recalibrate", lambda *a, **k: seen.append(a[3]) or recalibrate(*a, **k))
    net, (x, loader) = Stack(Ffn).eval(), _data()
    structprune.compress(net, x[:2], ratio=0.5, criterion=StructuredOBS(), data=loader, reconstruct=False,
                         ignore=["inp*", "head*"])
    assert seen == [loader]


def _data():
    torch.manual_seed(0)
    x = torch.randn(96, 5, 4)
    return x, [(x[:48], None), (x[48:], None)]


@pytest.mark.parametrize("kind", [Ffn, Mixing])
def test_the_refit_reads_the_recorded_stream_instead_of_running_the_dense_blocks_with_the_same_result(
        kind, monkeypatch):
    reconstruct = importlib.import_module("structprune.calibrate.reconstruct")
    dense_passes, run = [], reconstruct.stream_inputs
    monkeypatch.setattr(reconstruct, "stream_inputs", lambda *a: dense_passes.append(1) or run(*a))
    torch.manual_seed(0)
    net, (x, loader) = Stack(kind).eval(), _data()
    criterion = StructuredOBS(hessian_samples=48, tune_epochs=2)  # H on the first batch of two
    models, passes = [], []
    for budget in (0, 1 << 30):  # nothing recorded, then the first batch recorded
        dense_passes.clear()
        result = structprune.compress(net, x[:2], ratio=0.5, criterion=criterion, ignore=["inp*", "head*"],
                                      data=RecordedData(loader, Recording(max_bytes=budget)))
        models.append(result.model)
        passes.append(len(dense_passes))
    assert passes == [3 * 2, 3 * 1] if kind is Ffn else passes == [6, 6]  # Mixing tunes blocks: all dense outputs
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(a, b), name
