"""End-to-end tests of the `structprune` command line, run as a subprocess (refusals in process).

Every test runs `python -m structprune ...` in its own folder and checks the exit code, what was
printed, and what was (or was not) written. To stay within the default test budget on a 2-core
machine, independent CLI runs are started two at a time by module-scoped fixtures (`format_runs`,
`refusal_runs`); each case is still reported and asserted as its own test.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from held_job import interrupt_held_compress

CNN_KWARGS = '{"in_chans":1,"image_size":8}'
BASE_ARTIFACTS = {"model.pt2", "state_dict.pt", "plan.json", "report.json", "report.md", "report.png"}
ONNX_ARTIFACTS = BASE_ARTIFACTS | {"model.onnx"}
RUN_TIMEOUT_S = 300
PARALLEL_RUNS = 2  # the target machine has 2 cores; each CLI process runs one torch thread

FACTORY_MODULE = '''\
"""A user architecture, imported by `--arch tests_factory_mod:make`."""
import torch


def make(hidden=16):
    return torch.nn.Sequential(torch.nn.Linear(8, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 4))
'''


# ----------------------------------------------------------------------------------------------
# helpers


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("PYTHONSTARTUP", None)
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """`python -m structprune ARGS` in `cwd`; never raises on a non-zero exit."""
    return subprocess.run([sys.executable, "-m", "structprune", *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def run_in_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`structprune.cli.main(ARGS)` in this process, in `cwd`, with stdout and stderr captured: the CLI's
    own handling of a user error without the 6 s of a fresh interpreter. An exception escaping main
    comes back as exit 1 with its traceback on stderr, as a subprocess would show it."""
    from structprune import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(args)
        except BaseException:  # noqa: BLE001 - reported like an uncaught exception in a subprocess
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(["structprune", *args], code, out.getvalue(), err.getvalue())


def run_many(jobs: dict[str, tuple[list[str], Path]]) -> dict[str, subprocess.CompletedProcess]:
    """Run independent CLI invocations, PARALLEL_RUNS at a time; results by job name."""
    with ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as pool:
        futures = {name: pool.submit(run_cli, args, cwd) for name, (args, cwd) in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry below `folder` (hidden ones included) -> 'dir' or the file's sha256."""
    entries = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        entries[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def assert_no_traceback(proc: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in proc.stdout and "Traceback" not in proc.stderr, describe(proc)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int) -> str:
    """Exit `code`, nothing on stdout, exactly one `structprune: error: ...` line on stderr."""
    assert proc.returncode == code, describe(proc)
    assert_no_traceback(proc)
    assert proc.stdout.strip() == "", describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, describe(proc)
    assert lines[0].startswith("structprune: error: "), describe(proc)
    return lines[0]


SUMMARY_ROW = r"^{name}\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)x\s*$"


def summary_row(stdout: str, name: str) -> tuple[int, int, float]:
    match = re.search(SUMMARY_ROW.format(name=re.escape(name)), stdout, re.MULTILINE)
    assert match, f"no {name!r} row in the summary:\n{stdout}"
    before, after, change = match.groups()
    return int(before.replace(",", "")), int(after.replace(",", "")), float(change)


def assert_artifacts(out: Path, onnx: bool) -> dict:
    """The full artifact set, each file well-formed; returns report.json."""
    assert out.is_dir(), f"{out} was not written"
    assert {p.name for p in out.iterdir()} == (ONNX_ARTIFACTS if onnx else BASE_ARTIFACTS)
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["schema"] == "structprune.report/1"
    assert report["verification"]["ok"] is True
    plan = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    assert plan["keep"] and set(plan["keep"]) <= set(plan["sizes"])
    state = torch.load(out / "state_dict.pt", map_location="cpu", weights_only=True)
    assert state and all(isinstance(t, torch.Tensor) for t in state.values())
    program = torch.export.load(out / "model.pt2")
    args, kwargs = program.example_inputs
    output = program.module()(*args, **kwargs)
    assert torch.isfinite(output).all()
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.md").read_text(encoding="utf-8").strip()
    if onnx:
        import onnx as onnx_lib

        onnx_lib.checker.check_model(onnx_lib.load(str(out / "model.onnx")))
        assert report["onnx"]["parity"]["ok"] is True
    return report


def assert_summary_matches_report(stdout: str, report: dict) -> None:
    for row, key in (("params", "params"), ("MACs", "macs")):
        before, after, change = summary_row(stdout, row)
        assert (before, after) == (report[key]["before"], report[key]["after"])
        assert after < before and change > 1.0
    assert "verification: passed" in stdout


# ----------------------------------------------------------------------------------------------
# model files made by the tests


def tiny_cnn() -> torch.nn.Module:
    import models_zoo

    torch.manual_seed(0)
    return models_zoo.create("cnn", in_chans=1, image_size=8).eval()


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> Path:
    """Every kind of model file the tests feed to the CLI, in one folder."""
    import models_zoo

    folder = tmp_path_factory.mktemp("model_files")
    cnn = tiny_cnn()
    example = torch.randn(1, 1, 8, 8)
    torch.save(cnn.state_dict(), folder / "cnn_state.pt")
    torch.export.save(torch.export.export(cnn, (example,)), folder / "cnn.pt2")
    torch.save(cnn, folder / "cnn_whole.pt")  # a whole pickled module
    with warnings.catch_warnings():  # torch.jit.script is deprecated; we only need its archive format
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(cnn).save(str(folder / "cnn_script.pt"))
    noise = random.Random(1234).randbytes(4096)  # seeded: never starts like a zip or a pickle
    assert not noise.startswith((b"PK", b"\x80"))
    (folder / "random.pt").write_bytes(noise)
    data = (folder / "cnn_state.pt").read_bytes()
    (folder / "cnn_truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save(models_zoo.create("mlp").state_dict(), folder / "mlp_state.pt")
    (folder / "tests_factory_mod.py").write_text(FACTORY_MODULE)
    torch.manual_seed(0)
    factory_model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    torch.save(factory_model.state_dict(), folder / "factory_state.pt")
    bad_plan = {"format": 1, "keep": {"nosuch.weight:0": [0, 1]}, "sizes": {"nosuch.weight:0": 4}, "meta": {}}
    (folder / "bad_plan.json").write_text(json.dumps(bad_plan))
    return folder


def case_dir(base: Path, name: str, model_files: Path, files: tuple[str, ...]) -> Path:
    folder = base / name
    folder.mkdir()
    for file in files:
        shutil.copy2(model_files / file, folder / file)
    return folder


# ----------------------------------------------------------------------------------------------
# 1. compress in every accepted input format


@dataclass(frozen=True)
class FormatCase:
    args: tuple[str, ...]
    files: tuple[str, ...] = ()
    onnx: bool = False


FORMAT_CASES = {
    "zoo": FormatCase(("zoo:cnn", "--arch-kwargs", CNN_KWARGS), onnx=True),
    "pt2": FormatCase(("cnn.pt2",), ("cnn.pt2",), onnx=True),  # a static batch-1 archive
    "state_dict_zoo_arch": FormatCase(("cnn_state.pt", "--arch", "zoo:cnn", "--arch-kwargs", CNN_KWARGS),
                                      ("cnn_state.pt",)),
    "state_dict_factory_arch": FormatCase(("factory_state.pt", "--arch", "tests_factory_mod:make",
                                           "--input-shape", "1,8"),
                                          ("factory_state.pt", "tests_factory_mod.py")),
    "trusted_pickle": FormatCase(("cnn_whole.pt", "--trust-pickle", "--input-shape", "1,1,8,8"),
                                 ("cnn_whole.pt",)),
}


@dataclass
class Runs:
    base: Path
    dirs: dict[str, Path] = field(default_factory=dict)
    procs: dict[str, subprocess.CompletedProcess] = field(default_factory=dict)
    before: dict[str, dict[str, str]] = field(default_factory=dict)  # folder snapshots before the runs


@pytest.fixture(scope="module")
def format_runs(tmp_path_factory, model_files) -> Runs:
    """One compress per input format (plus `inspect zoo:resnet20`), two at a time."""
    runs = Runs(tmp_path_factory.mktemp("formats"))
    jobs = {}
    for name, case in FORMAT_CASES.items():
        runs.dirs[name] = case_dir(runs.base, name, model_files, case.files)
        onnx_flag = [] if case.onnx else ["--no-onnx"]
        jobs[name] = (["compress", *case.args, "--out", "out", *onnx_flag], runs.dirs[name])
    runs.dirs["inspect"] = case_dir(runs.base, "inspect", model_files, ())
    jobs["inspect"] = (["inspect", "zoo:resnet20"], runs.dirs["inspect"])
    runs.procs = run_many(jobs)
    return runs


@pytest.mark.parametrize("fmt", list(FORMAT_CASES))
def test_compress_each_input_format_writes_artifact_set(format_runs, fmt):
    proc, cwd = format_runs.procs[fmt], format_runs.dirs[fmt]
    assert proc.returncode == 0, describe(proc)
    assert_no_traceback(proc)
    report = assert_artifacts(cwd / "out", onnx=FORMAT_CASES[fmt].onnx)
    assert_summary_matches_report(proc.stdout, report)
    assert proc.stdout.rstrip().endswith("artifacts: out/")
    # nothing besides the inputs and the output folder: no staging folders, no default export/
    # (the factory module's import may leave a __pycache__ beside it)
    assert {p.name for p in cwd.iterdir()} - {"__pycache__"} == set(FORMAT_CASES[fmt].files) | {"out"}


def test_compress_with_onnx_reports_parity_and_latency(format_runs):
    proc = format_runs.procs["zoo"]
    assert proc.returncode == 0, describe(proc)
    report = json.loads((format_runs.dirs["zoo"] / "out" / "report.json").read_text())
    assert report["onnx"]["path"] == "model.onnx"
    assert report["onnx"]["parity"]["max_abs_error"] < 1e-3
    assert re.search(r"^onnxruntime ms\s+[\d.]+\s+[\d.]+\s+[\d.]+x", proc.stdout, re.MULTILINE), proc.stdout
    assert "onnx parity max abs error" in proc.stdout


def test_a_static_batch_archive_exports_a_fixed_batch_onnx_and_says_so(format_runs):
    proc = format_runs.procs["pt2"]
    report = json.loads((format_runs.dirs["pt2"] / "out" / "report.json").read_text())
    assert report["onnx"]["dynamic_batch"] is False and report["onnx"]["parity"]["batch_sizes_checked"] == [1]
    assert "note: model.onnx has a fixed batch of 1" in proc.stdout
    assert json.loads((format_runs.dirs["zoo"] / "out" / "report.json").read_text())["onnx"]["dynamic_batch"] is True


def test_all_artifacts_have_the_same_permissions(format_runs):
    out = format_runs.dirs["zoo"] / "out"
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()}
    assert len(set(modes.values())) == 1, modes


def test_inspect_prints_groups_and_blocked(format_runs):
    proc = format_runs.procs["inspect"]
    assert proc.returncode == 0, describe(proc)
    assert_no_traceback(proc)
    out = proc.stdout
    assert out.startswith("model resnet20 (zoo): ")
    assert re.search(r"^\d+ prunable groups, \d+ blocked$", out, re.MULTILINE), out
    assert re.search(r"^stem\.0\.weight:0\s+16\s+yes\s+exact", out, re.MULTILINE), out
    assert re.search(r"^head\.2\.weight:0\s+10\s+no\s+.*tied to a model output", out, re.MULTILINE), out
    assert re.search(r"^stages\.2\.2\.conv2\s+Conv2d\s+36,864", out, re.MULTILINE), out
    assert not (format_runs.dirs["inspect"] / "export").exists()  # inspect is read-only


def test_apply_saved_plan_reproduces_state_dict_and_bench(format_runs):
    """`apply MODEL plan.json` gives the same weights as the compress that wrote the plan; `bench`
    times the ONNX artifact. The two commands are independent, so they run side by side."""
    sd_dir, zoo_dir = format_runs.dirs["state_dict_zoo_arch"], format_runs.dirs["zoo"]
    assert format_runs.procs["state_dict_zoo_arch"].returncode == 0
    assert format_runs.procs["zoo"].returncode == 0
    procs = run_many({
        "apply": (["apply", "cnn_state.pt", "out/plan.json", "--arch", "zoo:cnn", "--arch-kwargs", CNN_KWARGS,
                   "--out", "other", "--no-onnx"], sd_dir),
        "bench": (["bench", "out/model.onnx", "--against", "out/model.onnx", "--runs", "3"], zoo_dir),
    })
    apply = procs["apply"]
    assert apply.returncode == 0, describe(apply)
    report = assert_artifacts(sd_dir / "other", onnx=False)
    assert_summary_matches_report(apply.stdout, report)
    first = torch.load(sd_dir / "out" / "state_dict.pt", weights_only=True)
    second = torch.load(sd_dir / "other" / "state_dict.pt", weights_only=True)
    assert list(first) == list(second)
    for key in first:
        assert torch.equal(first[key], second[key]), key
    assert json.loads((sd_dir / "other" / "plan.json").read_text())["keep"] == \
        json.loads((sd_dir / "out" / "plan.json").read_text())["keep"]

    bench = procs["bench"]
    assert bench.returncode == 0, describe(bench)
    assert_no_traceback(bench)
    lines = bench.stdout.strip().splitlines()
    assert re.match(r"^model\s+median ms\s+p90 ms$", lines[0]), bench.stdout
    rows = [line for line in lines if line.startswith("out/model.onnx")]
    assert len(rows) == 2, bench.stdout
    for row in rows:
        median, p90 = (float(v) for v in row.split()[1:3])
        assert 0 <= median <= p90 and p90 > 0
    assert re.search(r"^speedup of out/model\.onnx: [\d.]+x$", bench.stdout, re.MULTILINE), bench.stdout


# ----------------------------------------------------------------------------------------------
# 2. refusals: exit 2, one line naming the problem, no traceback, nothing written


@dataclass(frozen=True)
class Refusal:
    args: tuple[str, ...]
    expect: tuple[str, ...]  # substrings of the one error line
    files: tuple[str, ...] = ()
    existing_out: bool = False  # a non-empty ./out before the run
    code: int = 2
    subprocess: bool = False  # run as `python -m structprune` (else in process: the same CLI code, no start-up)


REFUSALS = {
    "pickle_without_trust": Refusal(("compress", "cnn_whole.pt", "--input-shape", "1,1,8,8"),
                                    ("cnn_whole.pt", "pickled", "--trust-pickle"), ("cnn_whole.pt",),
                                    subprocess=True),
    "torchscript": Refusal(("compress", "cnn_script.pt"), ("cnn_script.pt", "TorchScript"), ("cnn_script.pt",)),
    "missing_file": Refusal(("compress", "nowhere.pt"), ("nowhere.pt", "does not exist"), subprocess=True),
    "corrupt_file": Refusal(("compress", "random.pt"), ("random.pt", "not a PyTorch model file"), ("random.pt",)),
    "truncated_file": Refusal(("compress", "cnn_truncated.pt", "--arch", "zoo:cnn", "--arch-kwargs", CNN_KWARGS),
                              ("cnn_truncated.pt", "truncated"), ("cnn_truncated.pt",)),
    "unknown_zoo_arch": Refusal(("compress", "cnn_state.pt", "--arch", "zoo:nope"),
                                ("unknown zoo model 'nope'",), ("cnn_state.pt",)),
    "unimportable_arch": Refusal(("compress", "cnn_state.pt", "--arch", "nosuchmodule:fn"),
                                 ("cannot import module 'nosuchmodule'",), ("cnn_state.pt",)),
    "state_dict_does_not_fit": Refusal(("compress", "mlp_state.pt", "--arch", "zoo:cnn", "--arch-kwargs", CNN_KWARGS),
                                       ("mlp_state.pt", "does not fit architecture zoo:cnn"), ("mlp_state.pt",)),
    "ratio_above_one": Refusal(("compress", "zoo:mlp", "--ratio", "1.5"), ("ratio", "1.5")),
    "ratio_negative": Refusal(("compress", "zoo:mlp", "--ratio", "-0.1"), ("ratio", "-0.1")),
    "unknown_criterion": Refusal(("compress", "zoo:mlp", "--criterion", "nope"), ("unknown criterion 'nope'",)),
    "weigh_without_refit": Refusal(("compress", "zoo:mlp", "--data", "digits", "--weigh", "samples"),
                                   ("--weigh", "--criterion l2 refits none", "use --criterion obs")),
    "missing_npz": Refusal(("compress", "zoo:mlp", "--data", "nosuch.npz"), ("nosuch.npz", "does not exist")),
    "unknown_data_spec": Refusal(("compress", "zoo:mlp", "--data", "not a spec"),
                                 ("'not a spec'", "not understood")),
    "non_empty_out": Refusal(("compress", "zoo:mlp"), ("out", "not empty", "--force"), existing_out=True,
                             subprocess=True),
    "plan_with_unknown_group": Refusal(("apply", "cnn_state.pt", "bad_plan.json", "--arch", "zoo:cnn",
                                        "--arch-kwargs", CNN_KWARGS),
                                       ("unknown group 'nosuch.weight:0'",), ("cnn_state.pt", "bad_plan.json")),
    "finetune_without_data": Refusal(("compress", "zoo:mlp", "--finetune-epochs", "1"),
                                     ("--finetune-epochs", "--data")),
    "gate_without_data": Refusal(("compress", "zoo:mlp", "--max-accuracy-drop", "1"),
                                 ("--max-accuracy-drop", "--data")),
    "data_criterion_without_data": Refusal(("compress", "zoo:mlp", "--criterion", "taylor"), ("taylor", "--data")),
    # fixed bugs, kept as regression tests:
    "negative_accuracy_drop": Refusal(("compress", "zoo:mlp", "--data", "digits", "--max-accuracy-drop", "-1"),
                                      ("max", "-1")),
    "failure_leaves_no_parent_folder": Refusal(("apply", "cnn_state.pt", "bad_plan.json", "--arch", "zoo:cnn",
                                                "--arch-kwargs", CNN_KWARGS, "--out", "nested/run"),
                                               ("unknown group",), ("cnn_state.pt", "bad_plan.json")),
}

REFUSAL_XFAIL: dict[str, str] = {}  # refusal cases that still expose a known bug (none now)


@pytest.fixture(scope="module")
def refusal_runs(tmp_path_factory, model_files) -> Runs:
    runs = Runs(tmp_path_factory.mktemp("refusals"))
    jobs = {}
    for name, case in REFUSALS.items():
        folder = case_dir(runs.base, name, model_files, case.files)
        if case.existing_out:
            (folder / "out").mkdir()
            (folder / "out" / "keep.txt").write_text("previous run")
        runs.dirs[name] = folder
        out = [] if "--out" in case.args else ["--out", "out"]
        jobs[name] = ([*case.args, *out, "--no-onnx"], folder)
    runs.before = {name: snapshot(folder) for name, folder in runs.dirs.items()}
    runs.procs = run_many({name: job for name, job in jobs.items() if REFUSALS[name].subprocess})
    runs.procs.update({name: run_in_process(*job) for name, job in jobs.items() if not REFUSALS[name].subprocess})
    return runs


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.xfail(reason=REFUSAL_XFAIL[name], strict=True))
    if name in REFUSAL_XFAIL else name
    for name in REFUSALS
])
def test_refusal_exits_2_with_one_line_and_writes_nothing(refusal_runs, name):
    case, proc, folder = REFUSALS[name], refusal_runs.procs[name], refusal_runs.dirs[name]
    line = assert_one_line_error(proc, case.code)
    for text in case.expect:
        assert text in line, f"{text!r} not in {line!r}"
    assert snapshot(folder) == refusal_runs.before[name], "the refused run changed its folder"
    assert not (folder / "export").exists()
    if not case.existing_out:
        assert not (folder / "out").exists()


def test_force_replaces_non_empty_out(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("previous run")
    proc = run_cli(["compress", "zoo:mlp", "--out", "out", "--force", "--no-onnx"], tmp_path)
    assert proc.returncode == 0, describe(proc)
    report = assert_artifacts(tmp_path / "out", onnx=False)  # exactly the artifact set: keep.txt is gone
    assert_summary_matches_report(proc.stdout, report)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging or set-aside folders left


def test_usage_errors_from_argparse_exit_2(tmp_path):
    proc = run_cli(["compress", "zoo:mlp", "--arch-kwargs", "{not json"], tmp_path)
    assert proc.returncode == 2, describe(proc)
    assert_no_traceback(proc)
    assert "--arch-kwargs" in proc.stderr and "not valid JSON" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------
# 3. the quality gate (exit 1)


def train_mlp_on_digits(path: Path) -> float:
    """A zoo:mlp trained on the CLI's digits training split with plain torch; returns val accuracy (%)."""
    import models_zoo
    from structprune.data import load_data

    torch.manual_seed(0)
    bundle = load_data("digits", input_shape=(64,), batch_size=64, seed=0)
    model = models_zoo.create("mlp")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        for x, y in bundle.train:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in bundle.val:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    torch.save(model.state_dict(), path)
    return 100.0 * correct / total


def test_quality_gate_failure_exits_1_and_writes_nothing(tmp_path):
    accuracy = train_mlp_on_digits(tmp_path / "mlp_digits.pt")
    assert accuracy > 90.0
    before = snapshot(tmp_path)
    proc = run_cli(["compress", "mlp_digits.pt", "--arch", "zoo:mlp", "--ratio", "0.9", "--data", "digits",
                    "--max-accuracy-drop", "0", "--out", "out", "--no-onnx"], tmp_path)
    line = assert_one_line_error(proc, 1)
    assert "quality gate" in line and "FAILED" in line
    match = re.search(r"accuracy ([\d.]+)% -> ([\d.]+)%", line)
    assert match, line
    assert float(match.group(1)) == pytest.approx(accuracy, abs=0.01)
    assert float(match.group(2)) < float(match.group(1))
    assert snapshot(tmp_path) == before
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# 4. recovery


def test_finetune_recovery_through_cli(tmp_path):
    proc = run_cli(["compress", "zoo:mlp", "--data", "digits", "--finetune-epochs", "1", "--recover", "finetune",
                    "--out", "out", "--no-onnx"], tmp_path)
    assert proc.returncode == 0, describe(proc)
    assert_no_traceback(proc)
    report = assert_artifacts(tmp_path / "out", onnx=False)
    assert_summary_matches_report(proc.stdout, report)
    recovery = report["recovery"]
    assert recovery["method"] == "finetune"
    assert recovery["epochs"] == 1
    assert [h["epoch"] for h in recovery["history"]] == [1]
    accuracy = report["accuracy"]
    assert accuracy["data"] == "digits"
    for key in ("before", "after"):
        assert isinstance(accuracy[key], (int, float)) and 0.0 <= accuracy[key] <= 100.0
    assert accuracy["after"] == pytest.approx(recovery["val_accuracy_after"], abs=1e-3)
    row = re.search(r"^accuracy %\s+([\d.]+)\s+([\d.]+)\s+([+-][\d.]+)$", proc.stdout, re.MULTILINE)
    assert row, proc.stdout
    assert float(row.group(1)) == pytest.approx(accuracy["before"], abs=0.01)
    assert float(row.group(2)) == pytest.approx(accuracy["after"], abs=0.01)


# ----------------------------------------------------------------------------------------------
# 5. the demo


@pytest.mark.slow
def test_demo(tmp_path):
    proc = run_cli(["demo", "--out", "demo_out"], tmp_path, timeout=600)
    assert proc.returncode == 0, describe(proc)
    assert_no_traceback(proc)
    assert re.search(r"^trained resnet20 on digits: [\d.]+% validation accuracy", proc.stdout, re.MULTILINE)
    assert re.search(r"^accuracy %\s+[\d.]+\s+[\d.]+\s+[+-][\d.]+$", proc.stdout, re.MULTILINE), proc.stdout
    report = assert_artifacts(tmp_path / "demo_out", onnx=True)
    assert_summary_matches_report(proc.stdout, report)
    assert report["recovery"]["method"] == "distill"
    assert [p.name for p in tmp_path.iterdir()] == ["demo_out"]


# ----------------------------------------------------------------------------------------------
# 6. Ctrl-C, sent at a point of the job (held_job.py: the pruned model is running), not after a delay


def test_ctrl_c_leaves_nothing_behind(tmp_path):
    proc, job = interrupt_held_compress(tmp_path, ["--no-onnx"])  # see held_job: Ctrl-C inside the staged job
    assert proc.returncode == 130, describe(proc)
    assert "interrupted; no outputs were written" in proc.stderr, describe(proc)
    assert_no_traceback(proc)
    assert list(job.iterdir()) == [], "output, staging folder or partial file left behind"


def test_ctrl_c_with_force_keeps_previous_out(tmp_path):
    (tmp_path / "job" / "out").mkdir(parents=True)
    (tmp_path / "job" / "out" / "keep.txt").write_text("previous run")
    before = snapshot(tmp_path / "job")
    proc, job = interrupt_held_compress(tmp_path, ["--force"])
    assert proc.returncode == 130, describe(proc)
    assert "interrupted" in proc.stderr, describe(proc)
    assert_no_traceback(proc)
    assert snapshot(job) == before
