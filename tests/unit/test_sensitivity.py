"""Sensitivity analysis and the allocation that uses it (issue 14): the table's shape, a monotonic trend on a
model whose groups matter differently, an allocation that cuts the insensitive group deeper, determinism,
the CSV and heat map read back, and `structprune sensitivity` on the command line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import structprune
from structprune.cli import main
from structprune.errors import PlanError
from structprune.planning import score_groups
from structprune.report.sensitivity_files import read_sensitivity_csv
from structprune.selection import SensitivityTable, plan_by_sensitivity
from structprune.sensitivity import measure_sensitivity

SIGNAL, QUIET = "fc1.weight:0", "fc2.weight:0"


class TwoGroups(nn.Module):
    """fc1's 16 channels all carry the signal (graded magnitudes); fc2 has 4 real channels and 12 whose
    weights in and out are ~1e-4, so pruning up to 3/4 of fc2 changes almost nothing."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.randn(16, 8, generator=gen) * torch.linspace(0.5, 2.0, 16)[:, None])
            self.fc1.bias.zero_()
            self.fc2.weight.copy_(torch.randn(16, 16, generator=gen))
            self.fc2.weight[4:] *= 1e-4
            self.fc2.bias.zero_()
            self.fc3.weight.copy_(torch.randn(4, 16, generator=gen))
            self.fc3.weight[:, 4:] *= 1e-4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.fixture(scope="module")
def setup():
    model, x = TwoGroups().eval(), torch.randn(128, 8, generator=torch.Generator().manual_seed(1))
    graph = structprune.analyze(model, x)
    scores = score_groups(model, x, graph, structprune.CompressConfig()).scores
    return model, x, graph, scores


def test_the_table_has_a_row_per_group_and_a_column_per_ratio(setup) -> None:
    model, x, graph, scores = setup
    table = measure_sensitivity(model, x, graph, scores, [x], ratios=(0.75, 0.25, 0.5))
    assert table.metric == "fidelity" and table.baseline == pytest.approx(1.0)
    assert table.groups == (SIGNAL, QUIET) and table.sizes == (16, 16) and table.ratios == (0.25, 0.5, 0.75)
    assert np.asarray(table.values).shape == (2, 3) and len(table.rows()) == 6


def test_the_signal_group_loses_more_at_every_ratio_and_the_quiet_one_almost_nothing(setup) -> None:
    model, x, graph, scores = setup
    signal, quiet = measure_sensitivity(model, x, graph, scores, [x]).values
    assert signal[0] > signal[1] > signal[2] and signal[2] < 0.95  # monotonic: deeper cuts, lower fidelity
    assert min(quiet) > 0.9999


def test_with_labels_the_table_is_accuracy(setup) -> None:
    model, x, graph, scores = setup
    labels = model(x).argmax(dim=1)  # the dense model is 100% right on these
    table = measure_sensitivity(model, x, graph, scores, [(x, labels)])
    assert table.metric == "accuracy" and table.baseline == 100.0
    assert table.values[1] == (100.0, 100.0, 100.0) and list(table.values[0]) == sorted(table.values[0], reverse=True)
    assert table.values[0][-1] < 100.0


def test_the_sensitivity_allocation_prunes_the_insensitive_group_deeper(setup) -> None:
    model, x, graph, scores = setup
    result = structprune.compress(model, x, ratio=0.5, allocation="sensitivity", data=[x])
    kept = {g: len(result.plan.keep[g]) for g in (SIGNAL, QUIET)}
    assert kept[QUIET] == 4 and kept[SIGNAL] == 16 - (16 - 12)  # 16 of 32 channels: the 12 quiet ones first, then 4
    assert result.plan.meta["allocation"] == "sensitivity" and result.report.verification["ok"]
    uniform = structprune.compress(model, x, ratio=0.5)
    assert _cosine(result.model, model, x) > _cosine(uniform.model, model, x)


def test_a_macs_target_by_sensitivity_is_met_and_cuts_the_quiet_group_first(setup) -> None:
    model, x, graph, scores = setup
    result = structprune.compress(model, x, target_macs=0.5, allocation="sensitivity", data=[x])
    assert result.report.extra["target"]["within_tolerance"] and result.report.extra["target"]["allocation"] == \
        "sensitivity"
    removed = {g: 16 - len(result.plan.keep[g]) for g in (SIGNAL, QUIET)}
    assert removed[QUIET] > removed[SIGNAL]


def test_same_seed_same_table_and_plan(setup) -> None:
    model, x, graph, scores = setup
    tables = [measure_sensitivity(model, x, graph, scores, [x]) for _ in range(2)]
    assert tables[0] == tables[1]
    plans = [structprune.compress(model, x, target_params=0.4, allocation="sensitivity", data=[x], seed=3).plan
             for _ in range(2)]
    assert plans[0].to_json() == plans[1].to_json()


def test_a_table_can_be_passed_instead_of_data(setup) -> None:
    model, x, graph, scores = setup
    table = measure_sensitivity(model, x, graph, scores, [x])
    plan = structprune.select(model, x, graph, ratio=0.5, allocation="sensitivity", sensitivity=table)
    assert plan == plan_by_sensitivity(graph.groups, scores, table, ratio=0.5,
                                       meta={"criterion": "l2", "seed": 0, "attention": "heads"})


def test_sensitivity_allocation_without_data_or_table_is_an_error(setup) -> None:
    model, x, graph, scores = setup
    with pytest.raises(PlanError, match="allocation 'sensitivity' measures each group's sensitivity on data"):
        structprune.compress(model, x, ratio=0.5, allocation="sensitivity")


def test_a_table_of_another_model_names_the_missing_group(setup) -> None:
    model, x, graph, scores = setup
    other = SensitivityTable("fidelity", 1.0, (0.5,), ("conv.weight:0",), (8,), ((0.9,),))
    with pytest.raises(PlanError, match="the sensitivity table has no row for group 'fc1.weight:0'"):
        structprune.select(model, x, graph, ratio=0.5, allocation="sensitivity", sensitivity=other)


def _cosine(pruned: nn.Module, dense: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(torch.nn.functional.cosine_similarity(pruned(x), dense(x), dim=1).mean())


# ---- the command line --------------------------------------------------------------------------------------

def test_cli_sensitivity_prints_the_table_and_writes_csv_and_png(tmp_path, capsys) -> None:
    out = tmp_path / "sens"
    assert main(["sensitivity", "zoo:mlp", "--data", "digits", "--ratios", "0.5,0.25", "--max-samples", "64",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("sensitivity of mlp by accuracy") and "0.25" in printed and "sensitivity.png" in printed
    rows = read_sensitivity_csv(out / "sensitivity.csv")
    assert [(r["group"], r["ratio"]) for r in rows] == [(g, r) for g in ("features.0.weight:0", "features.2.weight:0")
                                                        for r in (0.25, 0.5)]
    assert all(r["metric"] == "accuracy" and r["drop"] == pytest.approx(rows[0]["value"] + rows[0]["drop"] - r["value"])
               for r in rows)
    assert (out / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == ["sensitivity.csv", "sensitivity.png"]


@pytest.mark.parametrize("argv, message", [
    (["sensitivity", "zoo:mlp", "--data", "digits", "--ratios", "0,abc"],
     "--ratios: '0,abc' is not a list of distinct fractions in (0, 1), e.g. 0.25,0.5,0.75"),
    (["sensitivity", "zoo:mlp", "--data", "digits", "--ratios", "0.5,0.5"], "is not a list of distinct fractions"),
    (["sensitivity", "zoo:mlp"], "the following arguments are required: --data"),
    (["sensitivity", "missing.pt2", "--data", "digits"], "missing.pt2"),
    (["sensitivity", "zoo:mlp", "--data", "nowhere.npz"], "nowhere.npz"),
    (["sensitivity", "zoo:mlp", "--data", "digits", "--criterion", "nope"], "nope"),
    (["compress", "zoo:mlp", "--ratio", "0.5", "--allocation", "sensitivity"],
     "--allocation sensitivity measures each group's sensitivity on data: pass --data"),
])
def test_cli_bad_input_is_one_line_and_exit_2(argv, message, tmp_path, capsys) -> None:
    assert main([*argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_cli_compress_allocates_a_target_by_sensitivity(tmp_path, capsys) -> None:
    out = tmp_path / "mlp"
    assert main(["compress", "zoo:mlp", "--data", "digits", "--target-macs", "0.5", "--allocation", "sensitivity",
                 "--no-onnx", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target"]["allocation"] == "sensitivity" and report["target"]["within_tolerance"] is True
    assert report["plan"]["allocation"] == "sensitivity" and abs(report["macs"]["after"] / report["macs"]["before"]
                                                                  - 0.5) <= 0.01
    assert "target: keep 0.5 of MACs" in capsys.readouterr().out
