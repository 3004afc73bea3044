"""`structprune compress --sparsity-train E --group-lasso LAMBDA [--group-norm-threshold T]`: bad or
contradicting flags are one line on stderr and exit 2 before any model is loaded; a short run on digits
(about 6 s) writes the `sparsity` section."""
from __future__ import annotations

import json

import pytest

from structprune.cli import main

HELP = "(see 'structprune compress --help')"


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("flags, expected", [
    (["--sparsity-train", "0"], f"--sparsity-train: '0' is not a positive integer {HELP}"),
    (["--sparsity-train", "x"], f"--sparsity-train: 'x' is not a positive integer {HELP}"),
    (["--group-lasso", "-1"], f"--group-lasso: '-1' is not a number > 0 {HELP}"),
    (["--group-lasso", "nan"], f"--group-lasso: 'nan' is not a number > 0 {HELP}"),
    (["--group-norm-threshold", "0"], f"--group-norm-threshold: '0' is not a number > 0 {HELP}"),
])
def test_bad_values_are_one_line_exit_2(capsys, flags, expected) -> None:
    code, out, err = run_main(capsys, "compress", "zoo:mlp", *flags)
    assert (code, out, err.splitlines()) == (2, "", [f"structprune: error: {expected}"])


@pytest.mark.parametrize("flags, expected", [
    (["--group-lasso", "1e-3"], "--group-lasso and --group-norm-threshold go with --sparsity-train E"),
    (["--group-norm-threshold", "0.1"], "--group-lasso and --group-norm-threshold go with --sparsity-train E"),
    (["--sparsity-train", "2", "--data", "digits"], "--sparsity-train needs --group-lasso LAMBDA"),
    (["--sparsity-train", "2", "--group-lasso", "1e-3"], "--sparsity-train trains on data: pass --data"),
    (["--sparsity-train", "2", "--group-lasso", "1e-3", "--data", "digits", "--group-norm-threshold", "0.1",
      "--target-macs", "0.5"], "--group-norm-threshold chooses what is pruned; drop --target-macs"),
    (["--sparsity-train", "2", "--group-lasso", "1e-3", "--data", "digits", "--group-norm-threshold", "0.1",
      "--ratio", "0.3"], "--group-norm-threshold chooses what is pruned; drop --ratio"),
    (["--sparsity-train", "2", "--group-lasso", "1e-3", "--data", "digits", "--target-latency-ms", "1"],
     "not --target-latency-ms or --allocation"),
    (["--sparsity-train", "2", "--group-lasso", "1e-3", "--data", "digits", "--iterative", "2"],
     "drop --iterative and --ap"),
    (["--sparsity-train", "2", "--group-lasso", "1e-3", "--data", "digits", "--criterion", "taylor"],
     "drop --criterion taylor"),
    (["--sparsity-train", "2", "--group-lasso", "1e-3", "--data", "digits", "--group-ratio", "0=0.5"],
     "drop --group-ratio"),
])
def test_contradicting_or_missing_flags_are_one_line_exit_2(capsys, flags, expected) -> None:
    code, out, err = run_main(capsys, "compress", "zoo:mlp", *flags)
    assert (code, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith("structprune: error: ") and expected in err
    assert "Traceback" not in err


def test_compress_with_sparsity_training_on_digits_writes_the_section(capsys, tmp_path) -> None:
    out = tmp_path / "gl"
    code, stdout, err = run_main(capsys, "compress", "zoo:cnn", "--arch-kwargs", '{"in_chans": 1, "image_size": 8}',
                                 "--data", "digits", "--sparsity-train", "1", "--group-lasso", "1e-3",
                                 "--target-macs", "0.5", "--finetune-epochs", "1", "--recover", "finetune",
                                 "--no-onnx", "--out", str(out))
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    section = report["sparsity"]
    assert (section["epochs"], section["lambda"], section["threshold_source"]) == (1, 1e-3, "budget")
    assert len(section["history"]) == 1 and section["history"][0]["val_accuracy"] is not None
    assert report["target"]["within_tolerance"] and report["recovery"]["epochs"] == 1
    assert json.loads((out / "plan.json").read_text())["meta"]["selection"] == "group_norm_threshold"
