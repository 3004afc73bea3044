"""`recapture=False`: verification without re-exporting the pruned model, and MACs counted on a
running forward (MacCounter) that agree with the graph count."""
from __future__ import annotations

import json

import pytest
import torch

import models_zoo
import structprune
from helpers import BakedWidth
from structprune import VerificationError
from structprune.capture import capture
from structprune.cli import main
from structprune.data.running import normalize_inputs
from structprune.graph.cost import MacCounter, macs_of
from structprune.report.report import verification_label


@pytest.mark.parametrize("name", models_zoo.list_models())
def test_mac_counter_on_a_forward_equals_the_graph_count(name: str) -> None:
    model, x = models_zoo.create(name).eval(), models_zoo.example_inputs(name)
    args, kwargs = normalize_inputs(x)
    with MacCounter() as counter, torch.no_grad():
        model(*args, **kwargs)
    assert counter.total > 0
    assert counter.total == macs_of(capture(model, x))


@pytest.mark.parametrize("name", ["resnet20", "vit"])
def test_compress_without_recapture_gives_the_same_model_and_report_numbers(name: str) -> None:
    model, x = models_zoo.create(name).eval(), models_zoo.example_inputs(name)
    full = structprune.compress(model, x, ratio=0.5)
    fast = structprune.compress(model, x, ratio=0.5, recapture=False)
    assert fast.plan == full.plan
    assert fast.model.state_dict().keys() == full.model.state_dict().keys()
    for key, tensor in full.model.state_dict().items():
        assert torch.equal(fast.model.state_dict()[key], tensor), key
    assert (fast.report.params_after, fast.report.macs_after) == (full.report.params_after, full.report.macs_after)
    assert fast.report.macs_after < fast.report.macs_before
    names = [c["name"] for c in fast.report.verification["checks"]]
    assert fast.report.verification["ok"] and fast.report.verification["recapture"] is False
    assert "recapture" not in names and {"output_shapes", "sizes", "masking_equivalence"} <= set(names)
    assert full.report.verification["recapture"] is True and "recapture" in [
        c["name"] for c in full.report.verification["checks"]]


def test_without_recapture_a_broken_rewrite_still_fails_verification() -> None:
    with pytest.raises(VerificationError, match="failed verification and is not returned: runs: pruned model "
                                                "failed to run"):
        structprune.compress(BakedWidth().eval(), torch.randn(2, 5, 12), ratio=0.5, recapture=False, strict=True)


def test_verification_label_names_a_skipped_recapture() -> None:
    assert verification_label({"ok": True, "recapture": True}) == "passed"
    assert verification_label({"ok": True}) == "passed"  # reports written before the key existed
    assert verification_label({"ok": True, "recapture": False}) == "passed (no re-capture)"
    assert verification_label({"ok": False, "recapture": False}) == "FAILED"


def test_cli_no_recapture_is_recorded_in_the_report_and_the_summary(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["compress", "zoo:cnn", "--ratio", "0.5", "--no-onnx", "--no-recapture", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["ok"] and report["verification"]["recapture"] is False
    assert "verification: passed (no re-capture)" in capsys.readouterr().out
    assert "passed (no re-capture)" in (out / "report.md").read_text()
