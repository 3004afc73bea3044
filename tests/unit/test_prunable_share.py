"""What was not pruned: the share of channels and MACs in prunable groups, counted by hand on small
models and checked where a user reads it (CLI summary, report.md, report.json, `structprune inspect`).

The blocked CNN: conv1 (3 -> 8) feeds conv2 (8 -> 16) through a ReLU, so conv1's 8 filters form the one
prunable group. conv2's output and conv3's input pass through `special_erfcx`, an op without a channel
rule, so both are blocked; conv3's output is the model output. conv1 writes and conv2 reads the
prunable group; conv3 touches only blocked groups, so its MACs are not prunable.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from structprune.api import analyze, compress
from structprune.cli import main
from structprune.graph.cost import PrunableMacs, macs_of, prunable_macs, prunable_section
from structprune.inspection import inspect_model
from structprune.report.prunable import group_lines
from structprune.report.summary import job_summary
from structprune.report.writers import load_report_json, render_markdown, write_report_json

SIDE = 8  # input height and width; every conv keeps it (3x3, padding 1)
CONV1 = 8 * SIDE * SIDE * 3 * 9  # 8 output channels per pixel, each a 3x3 window over 3 inputs
CONV2 = 16 * SIDE * SIDE * 8 * 9
CONV3 = 16 * SIDE * SIDE * 16 * 9
BLOCKED_LINES = [
    "groups: 1 of 5 prunable, holding 8 of 59 channels (13.6%) and 37.3% of MACs",
    ("blocked: 4 groups, top reasons: passes through an op without a channel rule: aten.special_erfcx (2); "
     "tied to a model input: x (1); tied to a model output: output 0 (1)"),
]
MLP_LINES = ["groups: 1 of 3 prunable, holding 8 of 14 channels (57.1%) and 100.0% of MACs",
             "blocked: 2 groups, top reasons: tied to a model input: input (1); tied to a model output: output 0 (1)"]


class BlockedCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.special.erfcx(self.conv2(torch.relu(self.conv1(x))))
        return self.conv3(x).mean((2, 3))


def blocked_cnn() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return BlockedCNN().eval(), torch.randn(1, 3, SIDE, SIDE)


def mlp() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval(), torch.randn(1, 4)


def test_hand_count_of_the_blocked_cnn_matches_the_mac_counter() -> None:
    assert (CONV1, CONV2, CONV3) == (13_824, 73_728, 147_456)
    graph = analyze(*blocked_cnn())
    assert macs_of(graph.captured) == CONV1 + CONV2 + CONV3
    assert prunable_macs(graph) == PrunableMacs(CONV1 + CONV2, CONV1 + CONV2 + CONV3)
    assert prunable_macs(graph).share == pytest.approx(87_552 / 235_008)
    assert [g.id for g in graph.prunable] == ["conv1.weight:0"]


def test_section_counts_only_the_groups_it_is_given() -> None:
    graph = analyze(*blocked_cnn())
    assert prunable_section(graph) == {
        "groups": 1, "groups_total": 5, "channels": 8, "channels_total": 59, "channel_share": 0.1356,
        "macs": CONV1 + CONV2, "macs_total": CONV1 + CONV2 + CONV3, "macs_share": 0.3725}
    blocked_by_verification = prunable_section(graph, prunable_ids=[])  # what a report passes then
    assert (blocked_by_verification["groups"], blocked_by_verification["channels"]) == (0, 0)
    assert (blocked_by_verification["macs"], blocked_by_verification["macs_share"]) == (0, 0.0)


def test_fully_prunable_mlp_has_all_its_macs_prunable() -> None:
    graph = analyze(*mlp())
    assert prunable_macs(graph) == PrunableMacs(4 * 8 + 8 * 2, 4 * 8 + 8 * 2)  # both layers touch the 8 units
    assert group_lines([_row(g) for g in graph.groups], prunable_section(graph)) == MLP_LINES


@pytest.mark.parametrize("make, lines, shares", [(blocked_cnn, BLOCKED_LINES, (0.3725, 0.1356)),
                                                  (mlp, MLP_LINES, (1.0, 0.5714))])
def test_summary_report_md_and_json_state_the_shares_of_a_compressed_model(make, lines, shares, tmp_path) -> None:
    result = compress(*make(), ratio=0.5)
    rows = result.report.to_json()["groups"]
    section = prunable_section(result.graph, [g["id"] for g in rows if g["prunable"]])
    report = result.report.with_extra(prunable=section).to_json()  # what api.build_report is to add
    summary = job_summary(report, tmp_path).splitlines()
    assert summary[summary.index(lines[0]) + 1] == lines[1]
    assert "\n\n".join(lines) in render_markdown(report)
    written = load_report_json(write_report_json(report, tmp_path / "report.json"))
    assert (written["prunable"]["macs_share"], written["prunable"]["channel_share"]) == shares


def test_compress_report_carries_the_prunable_section() -> None:
    report = compress(*blocked_cnn(), ratio=0.5).report.to_json()
    assert report["prunable"]["macs_share"] == 0.3725


def test_inspect_prints_the_same_lines(tmp_path: Path, capsys) -> None:
    for (model, x), lines in ((blocked_cnn(), BLOCKED_LINES), (mlp(), MLP_LINES)):
        path = tmp_path / f"{type(model).__name__}.pt2"
        torch.export.save(torch.export.export(model, (x,)), path)
        assert inspect_model(str(path)).split("\n\n")[1].splitlines() == lines
        assert main(["inspect", str(path)]) == 0
        assert "\n".join(lines) in capsys.readouterr().out


def test_lines_leave_the_macs_out_when_they_are_unknown() -> None:
    groups = [{"id": "a:0", "size": 4, "kept": 2, "prunable": True, "why": ""}]
    expected = ["groups: 1 of 1 prunable, holding 4 of 4 channels (100.0%)"]
    assert group_lines(groups) == expected  # a report written before the section existed
    assert group_lines(groups, {"macs": 0, "macs_total": 0, "macs_share": None}) == expected  # no MACs


def _row(group) -> dict:
    return {"id": group.id, "size": group.size, "kept": group.size, "prunable": group.prunable,
            "why": "; ".join(str(r) for r in group.reasons)}
