"""Sweeps (structprune.sweep) through the Python API: the CSV schema, every point verified and on its MACs
target, both ratios, Torch-Pruning's reference lines (and their absence), the figure and the
self-contained page, the knee and the limit beside it."""
from __future__ import annotations

import base64
import csv
import json
import math
import sys

import pytest
import torch
from PIL import Image

import models_zoo
from helpers import digits_mlp
from structprune.api import analyze, compress
from structprune.data import load_data
from structprune.errors import UsageError, VerificationError
from structprune.pipeline import calibration_loader
from structprune.selection import PlanCost
from structprune.sweep import COLUMNS, SweepConfig, SweepResult, SweepRow, outputs, run_sweep, write_sweep
from structprune.sweep.curves import Stat, best_knee, curves, knee
from structprune.sweep.selecting import plan_to_target
from structprune.sweep.summary import _compare

BRIEF_COLUMNS = ["criterion", "seed", "target", "macs_before", "macs_after", "params_before", "params_after",
                 "compression_ratio", "theoretical_speedup", "accuracy", "baseline_accuracy", "delta", "verified",
                 "seconds"]


@pytest.fixture(scope="module")
def swept(digits_bundle, tmp_path_factory):
    """l2 and taylor plus Torch-Pruning's two lines, 2 points, 2 seeds (a model per seed), 1 fine-tune epoch."""
    config = SweepConfig(criteria=("l2", "taylor"), points=2, seeds=2, min_reduction=2.0, max_reduction=4.0, epochs=1,
                         calibration_samples=256, progress=False)
    result = run_sweep(digits_mlp, torch.randn(1, 64), digits_bundle, config, name="mlp")
    out = tmp_path_factory.mktemp("sweep") / "out"
    write_sweep(result, out)
    return result, out


def read_csv(out):
    with open(out / "sweep.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames), list(reader)


def test_the_csv_has_one_row_per_criterion_point_and_seed(swept) -> None:
    result, out = swept
    header, records = read_csv(out)
    assert header == list(COLUMNS) and set(BRIEF_COLUMNS) <= set(header)
    keys = {(r["tool"], r["criterion"], r["seed"], r["point"]) for r in records}
    expected = {(tool, crit, str(seed), str(point)) for tool, crit in
                [("structprune", "l2"), ("structprune", "taylor"), ("torch-pruning", "tp_l2"),
                 ("torch-pruning", "tp_random")] for seed in (0, 1) for point in (0, 1)}
    assert keys == expected and len(records) == len(expected) == len(result.rows)
    assert {r["verified"] for r in records} == {"true"} and result.verified
    assert {r["check"] for r in records if r["tool"] == "structprune"} == {"structprune"}
    assert [SweepRow.from_csv(r).to_csv() for r in records] == records


def test_structprune_points_meet_their_macs_target_and_report_both_ratios(swept) -> None:
    result, _ = swept
    for row in result.rows:
        assert row.compression_ratio == pytest.approx(row.params_before / row.params_after)
        assert row.theoretical_speedup == pytest.approx(row.macs_before / row.macs_after)
        assert row.delta == pytest.approx(row.accuracy - row.baseline_accuracy)
        assert 0.0 <= row.accuracy_one_shot <= 100.0 and 0.0 <= row.accuracy <= 100.0 and row.seconds > 0
        if row.tool == "structprune":  # compress's target: kept MACs within 2% of 1 / target
            assert row.macs_after / row.macs_before == pytest.approx(1.0 / row.target, rel=0.02)
    # a model per seed: each seed has its own baseline, shared by all of its rows
    baselines = {(r.seed, r.baseline_accuracy) for r in result.rows}
    assert len(baselines) == 2


def test_reference_lines_prune_the_same_model_to_the_same_budget(swept) -> None:
    result, _ = swept
    ours = {r.macs_before for r in result.rows if r.tool == "structprune"}
    theirs = [r for r in result.rows if r.tool == "torch-pruning"]
    assert {r.macs_before for r in theirs} == ours
    for row in theirs:  # the uniform ratio whose MACs come closest to the budget: whole channels are steps
        assert row.target / 1.3 <= row.theoretical_speedup <= row.target * 1.3
        assert row.check == "shapes"


def test_the_figure_and_the_page_show_both_curves_and_the_table(swept) -> None:
    result, out = swept
    with Image.open(out / "sweep.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1] > 600  # 2 x 2 panels
    page = (out / "sweep.html").read_text()
    assert base64.b64encode((out / "sweep.png").read_bytes()).decode() in page
    assert page.count("<tr class='row'>") == len(result.rows)
    assert page.count("<tr class='mean'>") == 4 * 2  # four curves, two points
    assert "http" not in page and "<link" not in page and "<script" not in page  # self-contained
    assert "estimated limit" in page and "observed knee after recovery" in page


def test_sweep_json_holds_the_limit_and_every_curve_s_knee(swept) -> None:
    result, out = swept
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["schema"] == "structprune.sweep/1" and summary["rows"] == 16 and summary["verified"]
    limit = summary["limit"]
    assert 0.0 < limit["channel_fraction"] < 1.0 and limit["macs_reduction"] >= 1.0
    assert len(limit["curve"]["fraction"]) == len(limit["curve"]["squared_width"])
    assert [(k["tool"], k["criterion"]) for k in summary["knees"]["accuracy"]] == [
        ("structprune", "l2"), ("structprune", "taylor"), ("torch-pruning", "tp_l2"), ("torch-pruning", "tp_random")]


def test_without_torch_pruning_the_reference_lines_are_omitted_with_a_note(digits_bundle, tmp_path,
                                                                           monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # `import torch_pruning` now raises ImportError
    config = SweepConfig(criteria=("l2",), points=2, epochs=0, limit=False, progress=False)
    result = run_sweep(digits_mlp(0), torch.randn(1, 64), digits_bundle, config)
    assert {r.tool for r in result.rows} == {"structprune"} and len(result.rows) == 2
    assert any("torch_pruning is not installed" in note for note in result.notes)
    write_sweep(result, tmp_path / "out")
    assert "torch_pruning is not installed" in (tmp_path / "out" / "sweep.html").read_text()


def test_a_point_that_cannot_be_reached_is_a_failed_row_not_a_crash(digits_bundle) -> None:
    config = SweepConfig(criteria=("l2",), points=2, min_reduction=2.0, max_reduction=5000.0, epochs=0,
                         reference=False, limit=False, progress=False)
    result = run_sweep(digits_mlp(0), torch.randn(1, 64), digits_bundle, config)
    reached, failed = result.rows
    assert reached.verified and not failed.verified and not result.verified
    assert "best achievable" in failed.error or "cannot" in failed.error
    assert math.isnan(failed.accuracy) and failed.macs_after == 0


def row(criterion: str, seed: int, point: int, speedup: float, accuracy: float, baseline: float = 95.0) -> SweepRow:
    return SweepRow("structprune", criterion, seed, point, speedup, 100, int(100 / speedup), 10, 5, 2.0, speedup,
                    accuracy, accuracy, baseline, accuracy - baseline, True, "structprune", 1.0)


def test_the_knee_is_the_first_point_more_than_the_drop_below_the_baseline() -> None:
    rows = [row("a", s, i, x, acc + s) for s in (0, 1) for i, (x, acc) in enumerate([(2, 95), (4, 93.6), (8, 90)])]
    rows += [row("b", 0, i, x, 94.8) for i, x in enumerate((2, 4, 8))]
    dense = Stat(95.0, 0.0)
    found = {c.criterion: knee(c, dense, drop=2.0) for c in curves(rows)}
    assert (found["a"].reduction, found["a"].last_ok) == (8, 4)  # 94.1 at 4x is within 2 points, 90.5 is not
    assert (found["b"].reduction, found["b"].last_ok) == (None, 8)
    assert best_knee(list(found.values())).criterion == "b"
    assert knee(curves(rows)[0], dense, drop=0.5).reduction == 4


def test_limit_vs_knee_says_where_the_limit_falls() -> None:
    rows = [row("a", 0, i, x, acc) for i, (x, acc) in enumerate([(2, 95), (4, 94), (8, 80)])]
    found = knee(curves(rows)[0], Stat(95.0, 0.0), drop=2.0)
    assert "agrees" in _compare(5.0, found)
    assert "conservative" in _compare(3.0, found)
    assert "optimistic" in _compare(9.0, found)


@pytest.mark.parametrize("options,message", [
    ({"points": 1}, "at least 2 points"),
    ({"criteria": ("l2", "tp_l2")}, "Torch-Pruning reference line"),
    ({"criteria": ("nope",)}, "unknown criterion"),
    ({"min_reduction": 4.0, "max_reduction": 2.0}, "1 < min < max"),
    ({"recover": "scratch-b"}, "finetune, distill"),
])
def test_bad_sweep_options_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        SweepConfig(**options)


def test_a_file_that_reads_back_differently_is_not_published(tmp_path, monkeypatch) -> None:
    rows = tuple(row("a", 0, i, x, acc) for i, (x, acc) in enumerate([(2, 95), (4, 94), (8, 80)]))
    result = SweepResult("toy", SweepConfig(criteria=("l2",), points=3, max_reduction=8.0), rows, None, ())
    write_sweep(result, tmp_path / "good")
    assert (tmp_path / "good" / "sweep.csv").read_text().count("\n") == 4
    original = outputs.atomic_write_text

    def flip_verified(path, text, **kwargs):
        return original(path, text.replace(",true,", ",false,") if path.name == "sweep.csv" else text, **kwargs)

    monkeypatch.setattr(outputs, "atomic_write_text", flip_verified)
    with pytest.raises(VerificationError, match="sweep.csv read back"):
        write_sweep(result, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def test_coreset_meets_a_macs_target_through_the_sweeps_search_as_compress_does() -> None:
    """The sweep's criterion wrapper lets coreset reallocate by parameters (0.80 of the MACs kept for a 0.5
    target here) and searches the target to ask for until its plan keeps 0.5; compress sets the counts by its
    target search and coreset only picks the channels (planning.plan_groups), so it meets 0.5 directly."""
    images = load_data("digits", input_shape=(1, 8, 8), seed=0)
    torch.manual_seed(0)
    cnn = models_zoo.create("cnn", in_chans=1, image_size=8, num_classes=10).eval()
    x, calibration = torch.randn(1, 1, 8, 8), calibration_loader(images, 256)
    assert compress(cnn, x, target_macs=0.5, criterion="coreset", data=calibration).report.extra["target"][
        "within_tolerance"]
    plan = plan_to_target(cnn, x, "coreset", 0.5, calibration)
    cost = PlanCost(analyze(cnn, x))
    assert cost.of_plan(plan)[0] / cost.dense[0] == pytest.approx(0.5, rel=0.02)
    assert plan.meta["criterion"] == "coreset"


def _multiple_of_8_widths(macs: int) -> list[tuple[int, int]]:
    """Hidden widths (a, b) of the zoo MLP 64 -> a -> b -> 10, both multiples of 8, that cost `macs`."""
    return [(a, b) for a in range(8, 129, 8) for b in range(8, 65, 8) if 64 * a + a * b + 10 * b == macs]


def test_round_to_keeps_every_pruned_width_a_multiple_for_both_tools(digits_bundle) -> None:
    rounded, plain = (run_sweep(digits_mlp(0), torch.randn(1, 64), digits_bundle,
                                SweepConfig(criteria=("l2",), points=2, min_reduction=2.0, max_reduction=3.0, epochs=0,
                                            limit=False, progress=False, round_to=round_to))
                      for round_to in (8, 1))
    assert {r.tool for r in rounded.rows} == {"structprune", "torch-pruning"}
    assert all(r.macs_before == 64 * 128 + 128 * 64 + 64 * 10 for r in rounded.rows)
    verified = [r for r in rounded.rows if r.verified]
    assert {r.tool for r in verified} == {"structprune", "torch-pruning"}
    assert all(_multiple_of_8_widths(r.macs_after) for r in verified)
    assert all("cannot be met within 2%" in r.error for r in rounded.rows if not r.verified)  # steps of 8 are coarse
    assert any(not _multiple_of_8_widths(r.macs_after) for r in plain.rows)
    assert "channel counts multiples of 8" in outputs._settings(rounded)
    for r in rounded.rows + plain.rows:  # a point is on its target (within 10%) or a failed row that says why
        assert (r.verified and abs(r.theoretical_speedup / r.target - 1) <= 0.10) or (not r.verified and r.error)
