"""The sweep's optional arms (structprune.sweep.options): the group-lasso curve with its extra epochs counted,
Scratch-B of the named curves' architectures, onnxruntime latency with one export per architecture, the
verdicts (pruning vs Scratch-B, double descent), and their CSV columns, table, figure and page."""
from __future__ import annotations

import csv
import math

import pytest
import torch
from PIL import Image

from helpers import digits_mlp
from structprune.errors import UsageError
from structprune.recover import scratch_b_epochs
from structprune.sweep import COLUMNS, SweepConfig, SweepRow, latency, run_sweep, write_sweep
from structprune.sweep.curves import Stat, curves
from structprune.sweep.options import GROUP_LASSO, GroupLassoCurve, LatencyProbe, ScratchB
from structprune.sweep.summary import table_header
from structprune.sweep.verdicts import descent_lines, rises, scratch_lines, scratch_verdict

ARM_COLUMNS = ["extra_epochs", "accuracy_scratch", "scratch_epochs", "scratch_seconds", "latency_dense_ms",
               "latency_ms", "latency_speedup", "speedup_per_mac"]
TIMING = {"seconds", "scratch_seconds", "latency_dense_ms", "latency_ms", "latency_speedup", "speedup_per_mac"}


def arms_config(**options) -> SweepConfig:
    fields = {"criteria": ("l2",), "points": 2, "seeds": 1, "min_reduction": 2.0, "max_reduction": 4.0, "epochs": 1,
              "reference": False, "limit": False, "calibration_samples": 128, "progress": False,
              "group_lasso": GroupLassoCurve(lam=0.01, epochs=1),
              "scratch": ScratchB(("l2",), dense_epochs=1, max_factor=3.0)}
    return SweepConfig(**{**fields, **options})


@pytest.fixture(scope="module")
def swept(digits_bundle, tmp_path_factory):
    """l2 and the group-lasso curve, Scratch-B of l2's architectures, 2 points, 1 seed, 1 fine-tune epoch."""
    result = run_sweep(digits_mlp, torch.randn(1, 64), digits_bundle, arms_config(), name="mlp")
    out = tmp_path_factory.mktemp("arms") / "out"
    write_sweep(result, out)
    return result, out


def test_the_group_lasso_curve_meets_its_targets_and_counts_its_sparsity_epochs(swept) -> None:
    result, out = swept
    with open(out / "sweep.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        records = list(reader)
    assert set(ARM_COLUMNS) <= set(reader.fieldnames) and tuple(reader.fieldnames) == COLUMNS
    assert [(r["criterion"], r["extra_epochs"]) for r in records] == [("l2", "0"), ("l2", "0"),
                                                                       (GROUP_LASSO, "1"), (GROUP_LASSO, "1")]
    lasso = [r for r in result.rows if r.criterion == GROUP_LASSO]
    assert all(r.verified and r.tool == "structprune" for r in lasso)
    for row in lasso:  # the threshold the budget asks for keeps 1 / target of the MACs (compress's 2%)
        assert row.macs_after / row.macs_before == pytest.approx(1.0 / row.target, rel=0.02)
        assert row.baseline_accuracy == result.rows[0].baseline_accuracy  # compared with the same dense model


def test_scratch_b_trains_the_named_curve_s_architectures_for_the_dense_compute(swept) -> None:
    result, _ = swept
    for row in result.rows:
        if row.criterion == "l2":
            assert row.scratch_epochs == scratch_b_epochs(1, row.macs_before, row.macs_after, 3.0)
            assert 0.0 <= row.accuracy_scratch <= 100.0 and row.scratch_seconds > 0
        else:  # not named in ScratchB.criteria
            assert row.scratch_epochs == 0 and math.isnan(row.accuracy_scratch)
    assert [r.scratch_epochs for r in result.rows if r.criterion == "l2"] == [2, 3]  # 2x, then 4x capped at 3
    point = curves(list(result.rows))[0].points[0]
    assert point.scratch_gain.mean == pytest.approx(result.rows[0].accuracy - result.rows[0].accuracy_scratch)


def test_the_same_seed_gives_the_same_rows(digits_bundle, swept) -> None:
    result, _ = swept
    again = run_sweep(digits_mlp, torch.randn(1, 64), digits_bundle, arms_config(), name="mlp")
    strip = [{k: v for k, v in r.to_csv().items() if k not in TIMING} for r in result.rows]
    assert strip == [{k: v for k, v in r.to_csv().items() if k not in TIMING} for r in again.rows]


def test_the_table_and_page_show_the_arms_and_the_verdicts(swept) -> None:
    result, out = swept
    header = table_header(result)
    assert header[-3:] == ("extra epochs", "Scratch-B acc %", "acc - Scratch-B") and "latency speedup" not in header
    page = (out / "sweep.html").read_text()
    assert "Scratch-B acc %" in page and "l2: pruning + recovery" in page
    assert "double descent: not assessed (one seed" in page
    assert "group_lasso curve: 1 sparsity epochs, lambda 0.01" in page


def test_latency_is_measured_beside_the_dense_model_once_per_architecture(digits_bundle, tmp_path, monkeypatch) -> None:
    exported = []
    original = latency.export_onnx

    def counting(model, example_inputs, path, **kwargs):
        exported.append(latency.architecture(model))
        return original(model, example_inputs, path, **kwargs)

    monkeypatch.setattr(latency, "export_onnx", counting)
    config = arms_config(seeds=2, group_lasso=None, scratch=None, epochs=0, latency=LatencyProbe(batch=4, runs=3))
    result = run_sweep(digits_mlp, torch.randn(1, 64), digits_bundle, config, name="mlp")
    assert len(exported) == len(set(exported)) == 1 + len({(r.macs_after, r.params_after) for r in result.rows})
    for row in result.rows:
        assert row.latency_dense_ms > 0 and row.latency_ms > 0
        assert row.latency_speedup == pytest.approx(row.latency_dense_ms / row.latency_ms)
        assert row.speedup_per_mac == pytest.approx(row.latency_speedup / row.theoretical_speedup)
    write_sweep(result, tmp_path / "out")
    with Image.open(tmp_path / "out" / "sweep.png") as image:
        assert image.size[1] > image.size[0]  # a third row of panels: speedup and speedup / MACs
    assert table_header(result)[-2:] == ("latency speedup", "speedup / MACs")


def row(criterion: str, seed: int, point: int, speedup: float, accuracy: float, scratch: float = math.nan) -> SweepRow:
    return SweepRow("structprune", criterion, seed, point, speedup, 100, int(100 / speedup), 10, 5, 2.0, speedup,
                    accuracy, accuracy, 95.0, accuracy - 95.0, True, "structprune", 1.0, accuracy_scratch=scratch)


def test_a_rise_counts_as_double_descent_only_beyond_the_combined_seed_noise() -> None:
    # a: 90 -> 93 (+3, noise hypot(1, 1) = 1.41) is a rise; b: 90 -> 91 (+1 < 1.41) is not
    rows = [row(c, s, i, x, base + (1 if s else -1)) for c, top in (("a", 93), ("b", 91)) for s in (0, 1)
            for i, (x, base) in enumerate([(2, 95), (4, 90), (8, top)])]
    found = {c.criterion: rises(c, "accuracy") for c in curves(rows)}
    assert [(r.point, r.low, r.high, r.gain) for r in found["a"]] == [(2, 4.0, 8.0, 3.0)]
    assert found["a"][0].noise == pytest.approx(math.sqrt(2)) and found["b"] == []
    lines = descent_lines(curves(rows), seeds=2)
    assert lines == ["double descent (after recovery): a: 8.00x above 4.00x by 3.00 points (noise 1.41)"]
    assert descent_lines(curves([r for r in rows if r.criterion == "b"]), seeds=2) == [
        "double descent (after recovery): not observed"]
    assert descent_lines(curves(rows), seeds=1)[0].startswith("double descent: not assessed")


def test_pruning_beats_scratch_b_where_the_paired_gain_exceeds_its_spread() -> None:
    assert scratch_verdict(Stat(1.0, 0.5)) == "beats"
    assert scratch_verdict(Stat(-1.0, 0.5)) == "loses to"
    assert scratch_verdict(Stat(0.4, 0.5)) == "is within noise of"
    rows = [row("a", s, 0, 2.0, 96.0 + s, scratch=94.0 + s) for s in (0, 1)]
    rows += [row("a", s, 1, 4.0, 90.0, scratch=91.0 - 2.5 * s) for s in (0, 1)]  # paired -1.0 and +1.5
    rows += [row("a", s, 2, 8.0, 80.0, scratch=82.0 + 2 * s) for s in (0, 1)]  # paired -2.0 and -4.0
    assert scratch_lines(curves(rows)) == [
        "a: pruning + recovery beats Scratch-B at 2.00x (+2.00 ± 0.00); loses to Scratch-B at 8.00x (-3.00 ± 1.00); "
        "is within noise of Scratch-B at 4.00x (+0.25 ± 1.25) (accuracy - Scratch-B, paired, mean ± std over seeds)"]


@pytest.mark.parametrize("options,message", [
    ({"scratch": ScratchB(("taylor",), dense_epochs=2)}, "Scratch-B of taylor: name curves of this sweep"),
    ({"criteria": ("l2", GROUP_LASSO)}, "group_lasso is a curve of its own"),
])
def test_bad_arm_options_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        arms_config(**options)


@pytest.mark.parametrize("build,message", [
    (lambda: GroupLassoCurve(lam=0.0), "the penalty weight must be > 0"),
    (lambda: GroupLassoCurve(lam=0.1, epochs=0), "needs >= 1 epoch"),
    (lambda: ScratchB(("l2",), dense_epochs=0), "pass --train-epochs E"),
    (lambda: ScratchB(("l2",), dense_epochs=2, max_factor=0.5), "need >= 1"),
    (lambda: LatencyProbe(batch=0), "batch size >= 1"),
])
def test_bad_arm_values_are_one_line_errors(build, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        build()
