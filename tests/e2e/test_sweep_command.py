"""`structprune sweep` through the CLI's own parser (cli.build_parser wires add_sweep_arguments; the handler is
run_sweep_command): outputs, exit codes, and errors before any work."""
from __future__ import annotations

import argparse
import csv
import json

import pytest

from structprune.cli import build_parser
from structprune.errors import UsageError
from structprune.recover import scratch_b_epochs
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


def test_the_arms_from_the_command_line(tmp_path, capsys) -> None:
    """--group-lasso/--sparsity-train add a curve, --scratch all trains both curves' architectures from scratch
    for the dense training's compute (--train-epochs, capped by --scratch-max-factor), --latency times them."""
    out = tmp_path / "sweep"
    assert run(["sweep", *MLP, *QUICK, "--train-epochs", "1", "--group-lasso", "0.01", "--sparsity-train", "1",
                "--scratch", "all", "--scratch-max-factor", "2", "--latency", "--latency-batch", "4",
                "--out", str(out)]) == 0
    with open(out / "sweep.csv", newline="") as handle:
        records = list(csv.DictReader(handle))
    assert [(r["criterion"], r["extra_epochs"]) for r in records] == [
        ("l2", "0"), ("l2", "0"), ("group_lasso", "1"), ("group_lasso", "1")]
    assert [int(r["scratch_epochs"]) for r in records] == [
        scratch_b_epochs(1, int(r["macs_before"]), int(r["macs_after"]), 2.0) for r in records]
    assert {r["scratch_epochs"] for r in records if r["target"] == "8.0000"} == {"2"}  # 8x, capped at 2
    assert all(float(r["latency_speedup"]) > 0 and 0 <= float(r["accuracy_scratch"]) <= 100 for r in records)
    printed = capsys.readouterr().out
    assert "Scratch-B acc %" in printed and "speedup / MACs" in printed and "extra epochs" in printed
    assert "l2: pruning + recovery" in printed and "group_lasso: pruning + recovery" in printed
    assert "double descent: not assessed" in printed
    config = json.loads((out / "sweep.json").read_text())["config"]
    assert config["scratch"] == {"criteria": ["l2", "group_lasso"], "dense_epochs": 1, "lr": 0.05, "max_factor": 2.0}


@pytest.mark.parametrize("flags,message", [
    (["--scratch", "l2"], "--scratch trains each pruned architecture for the dense model's training compute"),
    (["--sparsity-train", "2"], "--sparsity-train E goes with --group-lasso LAMBDA"),
    (["--latency-batch", "8"], "add --latency"),
    (["--train-epochs", "1", "--scratch", "taylor"], "Scratch-B of taylor: name curves of this sweep (l2)"),
])
def test_arm_flags_that_do_not_fit_are_usage_errors_before_any_work(flags: list[str], message: str) -> None:
    args = cli_parser().parse_args(["sweep", *MLP, *QUICK, *flags])
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run_sweep_command(args)


def test_a_scratch_factor_below_one_exits_2_naming_the_flag(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_parser().parse_args(["sweep", *MLP, "--scratch-max-factor", "0.5"])
    assert exit_info.value.code == 2 and "--scratch-max-factor: '0.5' is not a compute factor >= 1" in \
        capsys.readouterr().err
