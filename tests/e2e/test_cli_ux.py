"""What a user sees: `--version`, `--help`, one-line argparse errors, the end-of-job summary and the
report.md sections for accuracy, recovery, calibration and artifacts read back.

Every CLI case here fails (or exits) inside argparse, before any model is loaded, so the file is fast;
the summary and Markdown are checked on hand-built report dicts with known numbers.
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from structprune.cli import main
from structprune.criteria import CRITERIA
from structprune.report.summary import job_summary, top_blocked_reasons
from structprune.report.writers import render_markdown

RATIO_ERROR = ("structprune: error: --ratio: 'abc' is not a fraction in [0, 1), e.g. 0.5 "
               "(see 'structprune compress --help')")
GROUPS = [
    {"id": "conv1.weight:0", "size": 16, "kept": 8, "prunable": True, "exact": True, "why": ""},
    {"id": "conv2.weight:0", "size": 32, "kept": 16, "prunable": True, "exact": True, "why": ""},
    {"id": "conv1.weight:1", "size": 3, "kept": 3, "prunable": False, "exact": False,
     "why": "tied to a model input: x"},
    {"id": "fc.weight:0", "size": 10, "kept": 10, "prunable": False, "exact": False,
     "why": "tied to a model output: output 0 (node linear)"},
    {"id": "mix.weight:0", "size": 8, "kept": 8, "prunable": False, "exact": False,
     "why": "passes through an op without a channel rule: aten.roll.default (node roll)"},
    {"id": "mix2.weight:0", "size": 8, "kept": 8, "prunable": False, "exact": False,
     "why": "passes through an op without a channel rule: aten.roll.default (node roll_1); "
            "tied to a model output: output 0 (node linear)"},
]
EPOCHS = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 80.0, "val_loss": 0.4, "val_accuracy": 90.0,
           "lr": 0.005, "lr_max": 0.01, "dead_rate": 0.4, "dead_rate_per_layer": {}},
          {"epoch": 2, "train_loss": 0.25, "train_accuracy": 92.5, "val_loss": 0.3, "val_accuracy": 93.5,
           "lr": 0.0, "lr_max": 0.005, "dead_rate": None, "dead_rate_per_layer": {}}]
RECOVERY = {"method": "distill", "epochs": 2, "schedule": "cosine", "base_lr": 0.01, "val_accuracy_before": 61.25,
            "val_accuracy_after": 93.5, "checkpoint": None, "notes": {}, "history": EPOCHS}
ARTIFACTS = {"plan.json": {"ok": True, "max_abs_error": None, "checked_at": ["keep", "sizes"]},
             "state_dict.pt": {"ok": True, "max_abs_error": 0.0, "checked_at": ["tensors"], "atol": None,
                               "detail": "architecture not rebuilt (the model did not come from --arch)"},
             "model.pt2": {"ok": True, "max_abs_error": 3e-7, "checked_at": ["batch 2", "batch 3"],
                           "atol": 1e-4, "rtol": 1e-3}}


def make_report(**sections) -> dict:
    """A report dict as `Report.to_json()` writes it: 1,000 -> 250 params, 8,000 -> 2,000 MACs."""
    return {"schema": "structprune.report/1", "params": {"before": 1000, "after": 250, "reduction": 4.0},
            "macs": {"before": 8000, "after": 2000, "reduction": 4.0}, "groups": GROUPS,
            "verification": {"ok": True, "checks": []}, "plan": {"ratio": 0.5}, **sections}


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def option_help(help_text: str) -> dict[str, str]:
    """Each option's entry in `--help` output (invocation and help, joined to one line), by flag."""
    entries: dict[str, str] = {}
    flag = None
    for line in help_text.split("\n\n", 2)[-1].splitlines():
        if line.startswith("  -"):
            flag = line.split()[0].rstrip(",")
            entries[flag] = line.strip()
        elif flag and line.startswith("   "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    return entries


# ----------------------------------------------------------------------------------------------
# the command line


def test_version_prints_the_installed_version(capsys) -> None:
    code, out, err = run_main(capsys, "--version")
    assert (code, out, err) == (0, f"structprune {metadata.version('structprune')}\n", "")


def test_a_bad_ratio_is_one_line_in_our_error_style(capsys) -> None:
    code, out, err = run_main(capsys, "compress", "zoo:mlp", "--ratio", "abc")
    assert (code, out) == (2, "")
    assert err.splitlines() == [RATIO_ERROR]


@pytest.mark.parametrize("flag, value, expected", [
    ("--batch-size", "x", "'x' is not a positive integer"),
    ("--batch-size", "0", "'0' is not a positive integer"),
    ("--lr", "x", "'x' is not a number > 0"),
    ("--lr", "-0.1", "'-0.1' is not a number > 0"),
    ("--round-to", "x", "'x' is not a positive integer"),
    ("--round-to", "2.5", "'2.5' is not a positive integer"),
    ("--finetune-epochs", "-1", "'-1' is not an integer >= 0"),
    ("--ratio", "1.5", "'1.5' is not a fraction in [0, 1), e.g. 0.5"),
    ("--ratio", "nan", "'nan' is not a fraction in [0, 1), e.g. 0.5"),
    ("--seed", "s", "'s' is not an integer >= 0"),
    ("--temperature", "inf", "'inf' is not a number > 0"),
    ("--max-accuracy-drop", "-1", "'-1' is not a number >= 0"),
    ("--distill-weight", "2", "'2' is not a number in [0, 1]"),
    ("--input-shape", "3", "'3' is not a shape with the batch first and positive sizes, e.g. 1,3,32,32"),
])
def test_every_bad_value_is_one_line_exit_2(capsys, flag: str, value: str, expected: str) -> None:
    code, out, err = run_main(capsys, "compress", "zoo:mlp", flag, value)
    assert (code, out) == (2, "")
    assert err.splitlines() == [f"structprune: error: {flag}: {expected} (see 'structprune compress --help')"]


RECOVER_CHOICES = "'auto', 'finetune', 'distill', 'scratch-e', 'scratch-b', 'none'"


@pytest.mark.parametrize("argv, expected", [
    (["compress"], "the following arguments are required: model (see 'structprune compress --help')"),
    (["frobnicate"], ("command: invalid choice: 'frobnicate' (choose from 'compress', 'apply', 'inspect', "
                      "'bench', 'sweep', 'sensitivity', 'demo') (see 'structprune --help')")),
    (["bench", "m.onnx", "--runs", "0"], "--runs: '0' is not a positive integer (see 'structprune bench --help')"),
    (["compress", "zoo:mlp", "--recover", "magic"],
     f"--recover: invalid choice: 'magic' (choose from {RECOVER_CHOICES}) (see 'structprune compress --help')"),
])
def test_argparse_errors_have_no_usage_dump(capsys, argv: list[str], expected: str) -> None:
    code, out, err = run_main(capsys, *argv)
    assert (code, out, err.splitlines()) == (2, "", [f"structprune: error: {expected}"])


def test_compress_help_shows_defaults_choices_criteria_and_examples(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # help text unwrapped, whatever the terminal
    code, out, err = run_main(capsys, "compress", "--help")
    assert (code, err) == (0, "")
    lines = option_help(out)
    assert lines["--ratio"].endswith("in [0, 1) (default: 0.5)")
    assert lines["--criterion"].endswith("(default: l2)")
    assert lines["--batch-size"].endswith("(default: 64)")
    assert lines["--finetune-epochs"].endswith("(default: 0)")
    assert "{heads,head_dims}" in lines["--attention"] and lines["--attention"].endswith("(default: heads)")
    assert "{auto,finetune,distill,scratch-e,scratch-b,none}" in lines["--recover"]
    assert all(name in lines["--criterion"] for name in CRITERIA)
    assert "(default: None)" not in out and "(default: False)" not in out and "(default: True)" not in out
    examples = out.split("examples:\n", 1)[1].splitlines()
    assert examples == ["  structprune compress zoo:resnet20 --ratio 0.5 --data digits --finetune-epochs 3",
                        ("  structprune compress weights.pt --arch mypkg.nets:build --input-shape 1,3,224,224 "
                         "--ratio 0.3 --out export/mynet")]
    assert "about 4x fewer params and MACs" in out


def test_input_shape_help_error_and_examples_all_put_the_batch_first(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    _, out, _ = run_main(capsys, "inspect", "--help")
    shape_help = option_help(out)["--input-shape"]
    assert "with the batch first, e.g. 1,3,32,32" in shape_help
    _, _, err = run_main(capsys, "inspect", "zoo:mlp", "--input-shape", "0,3,32,32")
    assert "with the batch first" in err and "1,3,32,32" in err


# ----------------------------------------------------------------------------------------------
# the end-of-job summary


def test_summary_shows_accuracy_after_recovery_and_one_shot() -> None:
    report = make_report(accuracy={"before": 95.0, "after": 93.5, "one_shot": 61.25, "data": "digits"},
                         recovery=RECOVERY)
    rows = [line.split() for line in job_summary(report, Path("out")).splitlines()]
    assert ["accuracy", "%", "95.00", "93.50", "-1.50"] in rows
    assert ["one-shot", "accuracy", "%", "95.00", "61.25", "-33.75"] in rows
    assert ["params", "1,000", "250", "4.00x"] in rows and ["MACs", "8,000", "2,000", "4.00x"] in rows


def test_summary_without_recovery_has_one_accuracy_row_and_says_when_accuracy_was_skipped() -> None:
    text = job_summary(make_report(accuracy={"before": 90.0, "after": 88.75, "data": "digits"}), Path("out"))
    assert [line.split() for line in text.splitlines() if "accuracy" in line] == \
        [["accuracy", "%", "90.00", "88.75", "-1.25"]]
    skipped = job_summary(make_report(accuracy_skipped="the validation split has no labels"), Path("out"))
    assert "accuracy: not measured (the validation split has no labels)" in skipped.splitlines()


def test_summary_counts_blocked_groups_with_top_reasons_and_the_prunable_share() -> None:
    lines = job_summary(make_report(), Path("out")).splitlines()
    assert "groups: 2 of 6 prunable, holding 48 of 77 channels (62.3%)" in lines
    assert ("blocked: 4 groups, top reasons: passes through an op without a channel rule: aten.roll.default (2); "
            "tied to a model output: output 0 (2); tied to a model input: x (1)") in lines
    assert lines[-2:] == ["verification: passed", "artifacts: out/"]


def test_summary_and_markdown_add_the_prunable_macs_share_from_the_section() -> None:
    report = make_report(prunable={"groups": 2, "channels": 48, "macs": 3000, "macs_total": 8000, "macs_share": 0.375})
    line = "groups: 2 of 6 prunable, holding 48 of 77 channels (62.3%) and 37.5% of MACs"
    assert line in job_summary(report, Path("out")).splitlines()
    assert line in render_markdown(report).splitlines()


def test_top_blocked_reasons_count_each_reason_once_per_group() -> None:
    twice = [{"id": "g", "size": 4, "kept": 4, "prunable": False,
              "why": "tied to a model output: output 0 (node a); tied to a model output: output 0 (node b)"}]
    assert top_blocked_reasons(twice) == [("tied to a model output: output 0", 1)]
    assert top_blocked_reasons(GROUPS, top=1) == [("passes through an op without a channel rule: aten.roll.default", 2)]


def test_summary_lists_artifacts_read_back_only_when_the_section_exists() -> None:
    with_checks = job_summary(make_report(artifacts=ARTIFACTS), Path("out")).splitlines()
    assert "artifacts read back: plan.json, state_dict.pt, model.pt2 (max abs error 3.00e-07)" in with_checks
    published = make_report(artifacts=ARTIFACTS, pt2_dynamic_batch=False,
                            accuracy={"before": 90.0, "after": 89.0, "published": 88.5,
                                      "published_artifact": "model.pt2"})
    lines = job_summary(published, Path("out")).splitlines()
    assert ("artifacts read back: plan.json, state_dict.pt, model.pt2 "
            "(max abs error 3.00e-07; model.pt2 accuracy 88.50%)") in lines
    assert any(line.startswith("note: model.pt2 has the example's fixed batch") for line in lines)
    assert not any("read back" in line for line in job_summary(make_report(), Path("out")).splitlines())


def test_summary_keeps_latency_parity_and_the_fixed_batch_note() -> None:
    onnx = {"dynamic_batch": False, "parity": {"max_abs_error": 2.5e-8, "batch_sizes_checked": [4]},
            "latency": {"dense_ms": 1.5, "pruned_ms": 0.5, "speedup": 3.0}}
    lines = job_summary(make_report(onnx=onnx), Path("out")).splitlines()
    assert ["onnxruntime", "ms", "1.500", "0.500", "3.00x"] in [line.split() for line in lines]
    assert "verification: passed; onnx parity max abs error 2.50e-08" in lines
    assert any(line.startswith("note: model.onnx has a fixed batch of 4") for line in lines)


# ----------------------------------------------------------------------------------------------
# report.md


def test_markdown_has_accuracy_recovery_epochs_calibration_and_artifacts() -> None:
    report = make_report(accuracy={"before": 95.0, "after": 93.5, "one_shot": 61.25, "published": 93.5,
                                   "data": "digits"}, recovery=RECOVERY, artifacts=ARTIFACTS,
                         calibration={"reconstructed_layers": 7, "batchnorm_layers_recalibrated": 21})
    text = render_markdown(report)
    assert "| pruned, one-shot (before recovery) | 61.25% | -33.75 pts |" in text
    assert "| pruned, after recovery | 93.50% | -1.50 pts |" in text
    assert "| model.pt2 as loaded | 93.50% | -1.50 pts |" in text
    assert ("Method `distill`, 2 epochs, schedule `cosine`, peak LR 0.01; validation accuracy 61.25% → 93.50%."
            in text)
    assert "| 1 | 0.5000 | 80.00% | 0.4000 | 90.00% | 5.0e-03 | 40.0% |" in text
    assert "| 2 | 0.2500 | 92.50% | 0.3000 | 93.50% | 0.0e+00 | — |" in text
    assert "| BatchNorm layers with re-estimated statistics | 21 |" in text
    assert "| layers refitted by least squares (reconstruction) | 7 |" in text
    assert "| `model.pt2` | ok | 3.0e-07 | batch 2, batch 3 | atol 1e-04, rtol 1e-03 |" in text
    assert ("| `state_dict.pt` | ok: architecture not rebuilt (the model did not come from --arch) | 0.0e+00 | "
            "tensors | — |") in text
    assert "groups: 2 of 6 prunable, holding 48 of 77 channels (62.3%)" in text
    order = [text.index(h) for h in ("## Summary", "## Accuracy", "## Recovery", "## Calibration",
                                     "## Verification", "## Artifacts read back", "## Channels per group")]
    assert order == sorted(order)


def test_markdown_shows_iterative_cycles_with_their_epochs() -> None:
    cycle = {"cycle": 1, "pruned_before": 0.0, "macs": 4000, "params": 500, "dead_rate_after_pruning": 0.5,
             "recovery": {**RECOVERY, "epochs": 1, "history": EPOCHS[:1]}}
    iterative = {"cycles": [cycle, {**cycle, "cycle": 2, "pruned_before": 0.5, "macs": 2000, "params": 250}],
                 "fraction_per_cycle": 0.292893, "accuracy_per_cycle": [90.0, 90.0]}
    text = render_markdown(make_report(iterative=iterative))
    assert "2 cycles, each pruning 29.29% of what remains." in text
    assert "| 2 | 50.0% | 250 | 2,000 | `distill`, 1 epoch, schedule `cosine`" in text
    assert "| cycle | epoch | train loss |" in text and "| 2 | 1 | 0.5000 | 80.00% |" in text


def test_markdown_leaves_out_sections_of_stages_that_did_not_run() -> None:
    text = render_markdown(make_report())
    for header in ("## Accuracy", "## Recovery", "## Calibration", "## Artifacts read back"):
        assert header not in text


def test_summary_warns_when_nothing_was_pruned() -> None:
    from structprune.report.summary import nothing_pruned_warning

    pruned = {"groups": [{"size": 8, "kept": 4, "prunable": True, "why": ""}]}
    untouched = {"groups": [{"size": 8, "kept": 8, "prunable": True, "why": ""},
                            {"size": 4, "kept": 4, "prunable": False, "why": "aten.foo (node foo)"}]}
    blocked = {"groups": [{"size": 4, "kept": 4, "prunable": False, "why": "aten.foo (node foo)"},
                          {"size": 2, "kept": 2, "prunable": False, "why": "aten.foo (node bar)"}]}
    assert nothing_pruned_warning(pruned) == []
    assert nothing_pruned_warning(untouched) == [
        "warning: nothing was pruned: no prunable group lost a channel (ratio too small, or groups ignored); "
        "the model is returned unchanged"]
    assert nothing_pruned_warning(blocked) == [
        "warning: nothing was pruned: all 2 channel groups are blocked (aten.foo (2)); the model is returned unchanged"]
