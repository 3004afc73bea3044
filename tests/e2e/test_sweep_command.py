"""`structprune sweep` through the CLI's own parser (cli.build_parser wires add_sweep_arguments; the handler is
run_sweep_command): outputs, exit codes, and errors before any work."""
from __future__ import annotations

import argparse
import csv
import json

import pytest

from structprune.cli import build_parser
from structprune.errors import UsageError
from structprune.sweep import run_sweep_command

MLP = ["zoo:mlp", "--arch-kwargs", '{"in_features": 64}', "--data", "digits"]
QUICK = ["--criteria", "l2", "--points", "2", "--epochs", "0", "--no-reference", "--no-limit"]


def cli_parser() -> argparse.ArgumentParser:
    """The parser `structprune` runs, with its `sweep` sub-command."""
    return build_parser()


def run(argv: list[str]) -> int:
    args = cli_parser().parse_args(argv)
    return args.handler(args)


def test_sweep_writes_verified_curves_and_prints_the_table(tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    assert run(["sweep", *MLP, *QUICK, "--criteria", "l2,taylor", "--seeds", "2", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["sweep.csv", "sweep.html", "sweep.json", "sweep.png"]
    with open(out / "sweep.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    assert len(records) == 2 * 2 * 2 and {r["verified"] for r in records} == {"true"}
    assert sorted({float(r["target"]) for r in records}) == [1.5, 8.0]
    printed = capsys.readouterr().out
    assert "points verified: 8 of 8" in printed and "MACs reduction" in printed
    assert "Torch-Pruning reference lines not asked for" in printed
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["config"]["seeds"] == 2 and summary["limit"] is None


def test_a_point_that_fails_is_exit_1_with_the_reason_in_the_table(tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    assert run(["sweep", *MLP, *QUICK, "--max-reduction", "5000", "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "points verified: 1 of 2" in printed and "failed: structprune l2 seed 0 at 5000x" in printed
    assert (out / "sweep.csv").read_text().count("false") == 1


def test_a_non_empty_out_folder_is_refused_before_any_work(tmp_path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        run(["sweep", "zoo:no-such-model", "--data", "digits", "--out", str(tmp_path)])
    assert (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("flags,message", [
    (["--points", "1"], "--points: '1' is not an integer >= 2"),
    (["--max-reduction", "0.5"], "--max-reduction: '0.5' is not a MACs reduction > 1"),
    (["--criteria", ","], "names no criterion"),
])
def test_bad_flags_exit_2_naming_the_flag(flags: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_parser().parse_args(["sweep", *MLP, *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_an_unknown_criterion_is_a_usage_error() -> None:
    args = cli_parser().parse_args(["sweep", *MLP, "--criteria", "l2,magic"])
    with pytest.raises(UsageError, match="unknown criterion 'magic'"):
        run_sweep_command(args)
