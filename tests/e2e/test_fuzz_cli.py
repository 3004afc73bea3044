"""Fuzzing the command line: garbled flags and values are refused cleanly, and nothing is written.

Every generated invocation holds at least one fault that makes it invalid (a bad number, an unknown
flag, a missing or wrong file, a bad --arch or --data spec, ...), each fault in its own slot so two
faults never cancel out. For each case, run in-process with `structprune.cli.main(argv)` in a fresh
working folder:
- the exit code is 2, and stderr is exactly one line starting `structprune: error:`;
- no traceback, no exception or SystemExit escapes `main`;
- the working folder stays empty (`--out out` never appears) and the inputs are byte-identical.
A few cases also run as `python -m structprune` to check real exit codes and stderr.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fuzz_harness import (
    Outcome,
    assert_refused,
    fresh_folder,
    fuzz_settings,
    run_cli_many,
    run_main,
    snapshot,
    tiny_onnx,
    write_mlp_files,
)
from hypothesis import example, given
from hypothesis import strategies as st

import models_zoo
import structprune

DEFAULT_CLI_CASES = 150
SLOW_CLI_CASES = 1200


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Valid and broken inputs the CLI faults point at, in one read-only-by-contract folder."""
    folder = tmp_path_factory.mktemp("cli_inputs")
    write_mlp_files(folder)
    model = models_zoo.create("mlp").eval()
    plan = structprune.compress(model, models_zoo.example_inputs("mlp", batch=1), ratio=0.5, recapture=False).plan
    (folder / "plan.json").write_text(plan.to_json())
    tiny_onnx(folder / "relu.onnx")
    (folder / "junk.bin").write_bytes(np.random.default_rng(0).bytes(2048))
    (folder / "empty.pt").write_bytes(b"")
    (folder / "list.json").write_text("[]")
    (folder / "no_classes").mkdir()
    (folder / "no_classes" / "readme.txt").write_text("not an image folder")
    np.savez(folder / "nan.npz", x=np.full((8, 64), np.nan, dtype=np.float32), y=np.arange(8) % 2)
    np.savez(folder / "complex.npz", x=np.ones((8, 64), dtype=np.complex64), y=np.arange(8) % 2)
    np.savez(folder / "no_x.npz", z=np.zeros(3))
    np.savez(folder / "big_labels.npz", x=np.zeros((8, 64), dtype=np.float32), y=np.array([0, 1] * 3 + [1, 10**12]))
    return folder


# ----------------------------------------------------------------------------------------------
# faults: each makes an otherwise valid invocation invalid; the slot keeps two faults apart


@dataclass(frozen=True)
class Fault:
    """Replace positional `slot` (model, plan, onnx) or append flag tokens; `inputs/` expands to cli_inputs."""

    slot: str
    tokens: tuple[str, ...]


NOT_A_NUMBER = ["nan", "NaN", "inf", "-inf", "1e309", "", " ", "abc", "0,5", "1/2", "0x10", "--", "½", "1e"]
RANGES = {  # flag -> values outside its range (on top of NOT_A_NUMBER)
    "--ratio": ["1", "1.0", "1.5", "-0.1", "-1e-9", "100"],
    "--round-to": ["0", "-3", "1.5"],
    "--batch-size": ["0", "-1", "2.5"],
    "--seed": ["-1", "1.5"],
    "--finetune-epochs": ["-1", "0.5"],
    "--iterative": ["-2", "1.5"],
    "--lr": ["0", "-0.1"],
    "--temperature": ["0", "-4"],
    "--label-smoothing": ["1", "1.5", "-0.1"],
    "--distill-weight": ["-0.1", "1.1"],
    "--max-group-ratio": ["0", "1.5", "-1"],
    "--max-accuracy-drop": ["-1", "-0.001"],
    "--ap": ["0", "1", "2", "-0.5"],
    "--dense-epochs": ["0", "-1"],
}
CHOICES = {"--attention": ["head", "HEADS", ""], "--recover": ["fine-tune", "auto "],
           "--lr-schedule": ["linear", ""], "--optimizer": ["adam", "SGD"], "--criterion": ["nope", "", "l2;l1"]}
BAD_JSON = ["{", "[]", "1", "null", '"x"', "{'a': 1}", '{"a": }', "{}}", '{"num_classes": -1}',
            '{"num_classes": 1e999}', '{"num_classes": NaN}', '{"num_classes": "10"}', '{"nope": 1}',
            '{"hidden": [1000000000000]}', '{"num_classes": 10000000000000}']
BAD_SHAPES = ["0,64", "1,-1", "1", "", "x", "-1,64", "1,2.5", "1,3,32,32", "1,63", "1,3,8,8", "1e3,64"]
BAD_ARCHS = ["zoo:nope", "zoo:", ":", "nosuchmodule:make", "torch.nn:NoSuchFactory", "not an arch", "os:getcwd",
             "json:loads", "a..b:c", "zoo:cnn", "zoo:mlp extra", "models_zoo:resnet20", "sys:exit"]
BAD_MODELS = ["inputs/junk.bin", "inputs/empty.pt", "inputs/no_classes", "inputs/nowhere.pt", "inputs/relu.onnx",
              "zoo:nope", "zoo:", "", "mlp", "x" * 300, "a/" * 3000, "inputs/plan.json"]
BAD_DATA = ["nosuch.npz", "not a spec", "", "inputs/junk.bin", "inputs/no_classes", "inputs/nan.npz",
            "inputs/complex.npz", "inputs/no_x.npz", "inputs/mlp_state.pt", "nosuchmodule:loaders", "os:getcwd",
            "json:loads", "sys:exit", "x" * 300, "y" * 300 + ".npz", "a/" * 3000]
BAD_OUT = ["inputs/junk.bin", "inputs/", "x" * 300, "inputs/junk.bin/out"]  # "inputs/": a non-empty folder
BAD_PLANS = ["inputs/nowhere.json", "inputs/no_classes", "inputs/junk.bin", "inputs/list.json", "inputs/empty.pt",
             "inputs/mlp.pt2"]
BAD_ONNX = ["inputs/nowhere.onnx", "inputs/no_classes", "inputs/junk.bin", "inputs/mlp.pt2", "inputs/empty.pt"]
UNKNOWN_FLAGS = ["--bogus", "--ratios", "--no-such-flag", "-z", "--out-dir", "---ratio"]


def _flag_faults(flags: dict[str, list[str]], extra: list[str]) -> st.SearchStrategy[Fault]:
    return st.sampled_from(sorted(flags)).flatmap(
        lambda flag: st.sampled_from(flags[flag] + extra).map(lambda value: Fault(flag, (flag, value))))


def _unknown_flag() -> st.SearchStrategy[Fault]:
    junk = st.text(alphabet="abcxyz-_=1", min_size=0, max_size=6)
    return st.tuples(st.sampled_from(UNKNOWN_FLAGS), junk).map(lambda t: Fault("unknown", (t[0] + t[1],)))


def _value_faults() -> st.SearchStrategy[Fault]:
    numbers = {flag: values + NOT_A_NUMBER for flag, values in RANGES.items()}
    return st.one_of(
        _flag_faults(numbers, []), _flag_faults(CHOICES, []), _unknown_flag(),
        st.sampled_from(BAD_JSON).map(lambda v: Fault("--arch-kwargs", ("--arch-kwargs", v))),
        st.sampled_from(BAD_SHAPES).map(lambda v: Fault("--input-shape", ("--input-shape", v))),
        st.sampled_from(BAD_DATA).map(lambda v: Fault("--data", ("--data", v))),
        st.sampled_from(BAD_OUT).map(lambda v: Fault("--out", ("--out", v))),
        st.sampled_from(sorted(set(RANGES) - {"--ap"})).map(lambda flag: Fault(flag, (flag,))),  # value missing
        st.just(Fault("stray", ("stray_positional",))),
    )


def _model_faults() -> st.SearchStrategy[Fault]:
    return st.one_of(
        st.sampled_from(BAD_MODELS).map(lambda m: Fault("model", (m,))),
        st.sampled_from(BAD_ARCHS).map(lambda a: Fault("model", ("inputs/mlp_state.pt", "--arch", a))),
        st.just(Fault("model", ("zoo:mlp", "--arch", "zoo:mlp"))),  # --arch is only for state_dict files
        st.just(Fault("model", ("inputs/mlp_state.pt",))),  # weights without --arch
        st.just(Fault("model", ("inputs/mlp.pt2", "--arch", "zoo:mlp"))),
    )


@dataclass(frozen=True)
class Command:
    """A valid invocation (positionals by slot, then flags) and the faults that apply to it."""

    positionals: tuple[tuple[str, str], ...]
    flags: tuple[str, ...]
    faults: Callable[[], st.SearchStrategy[Fault]]


COMMANDS = {
    "compress": Command((("model", "zoo:mlp"),), ("--no-onnx", "--no-recapture"),
                        lambda: st.one_of(_model_faults(), _value_faults())),
    "apply": Command((("model", "zoo:mlp"), ("plan", "inputs/plan.json")), ("--no-onnx", "--no-recapture"),
                     lambda: st.one_of(_model_faults(), st.sampled_from(BAD_PLANS).map(lambda p: Fault("plan", (p,))),
                                       _value_faults())),
    "inspect": Command((("model", "zoo:mlp"),), (),
                       lambda: st.one_of(
                           _model_faults(), _unknown_flag(),
                           st.sampled_from(BAD_JSON).map(lambda v: Fault("--arch-kwargs", ("--arch-kwargs", v))),
                           st.sampled_from(BAD_SHAPES).map(lambda v: Fault("--input-shape", ("--input-shape", v))))),
    "bench": Command((("onnx", "inputs/relu.onnx"),), ("--runs", "2"),
                     lambda: st.one_of(
                         st.sampled_from(BAD_ONNX).map(lambda p: Fault("onnx", (p,))),
                         st.sampled_from(BAD_ONNX).map(lambda p: Fault("--against", ("--against", p))),
                         _flag_faults({"--runs": ["0", "-1", "1.5"], "--batch": ["0", "-2", "1.5"]}, NOT_A_NUMBER),
                         _unknown_flag())),
}


@st.composite
def invalid_invocations(draw: st.DrawFn) -> tuple[str, tuple[Fault, ...]]:
    """A command and 1-3 faults in distinct slots."""
    name = draw(st.sampled_from(sorted(COMMANDS)))
    faults = draw(st.lists(COMMANDS[name].faults(), min_size=1, max_size=3, unique_by=lambda f: f.slot))
    return name, tuple(faults)


def build_argv(name: str, faults: tuple[Fault, ...], inputs: Path) -> list[str]:
    """The command's valid argv with the faults applied; `inputs/...` becomes a path into `inputs`."""
    command = COMMANDS[name]
    positionals = dict(command.positionals)
    flags: list[str] = list(command.flags)
    for fault in faults:
        if fault.slot in positionals:
            positionals[fault.slot], *rest = fault.tokens
            flags += rest
        else:
            flags += fault.tokens
    if name in ("compress", "apply") and not any(f.slot == "--out" for f in faults):
        flags += ["--out", "out"]
    return [_expand(token, inputs) for token in [name, *positionals.values(), *flags]]


def _expand(token: str, inputs: Path) -> str:
    return str(inputs / token[len("inputs/"):]) if token.startswith("inputs/") else token


def check_invalid_invocation(name: str, faults: tuple[Fault, ...], inputs: Path, parent: Path,
                             capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run one faulty invocation in a fresh cwd and assert every property of the module docstring."""
    cwd = fresh_folder(parent)
    monkeypatch.chdir(cwd)
    argv = build_argv(name, faults, inputs)
    before = snapshot(inputs)
    assert_refused(run_main(argv, capsys), argv)
    assert list(cwd.iterdir()) == [], f"{argv!r} wrote into the working folder: {sorted(os.listdir(cwd))}"
    assert snapshot(inputs) == before, f"{argv!r} changed or added files next to the inputs"


# ----------------------------------------------------------------------------------------------
# the tests


# Cases that failed while this fuzzer was written (bugs since fixed), kept as regression examples.
@example(invocation=("compress", (Fault("--arch-kwargs", ("--arch-kwargs", '{"num_classes": -1}')),)))
@example(invocation=("inspect", (Fault("--arch-kwargs", ("--arch-kwargs", '{"num_classes": 10000000000000}')),)))
@example(invocation=("inspect", (Fault("--input-shape", ("--input-shape", "1,3,32,32")),)))
@example(invocation=("compress", (Fault("model", ("x" * 300,)),)))
@example(invocation=("compress", (Fault("--data", ("--data", "x" * 300)),)))
@example(invocation=("compress", (Fault("--data", ("--data", "inputs/nan.npz")),)))
@example(invocation=("compress", (Fault("--data", ("--data", "inputs/complex.npz")),)))
@example(invocation=("compress", (Fault("--data", ("--data", "inputs/junk.bin")),)))
@example(invocation=("inspect", (Fault("model", ("inputs/mlp_state.pt", "--arch", "sys:exit")),)))
@given(invocation=invalid_invocations())
@fuzz_settings(DEFAULT_CLI_CASES)
def test_invalid_invocations_exit_2_with_one_line_and_write_nothing(
        invocation, cli_inputs, tmp_path, capsys, monkeypatch) -> None:
    check_invalid_invocation(*invocation, cli_inputs, tmp_path, capsys, monkeypatch)


@pytest.mark.slow
@given(invocation=invalid_invocations())
@fuzz_settings(SLOW_CLI_CASES)
def test_invalid_invocations_many(invocation, cli_inputs, tmp_path, capsys, monkeypatch) -> None:
    check_invalid_invocation(*invocation, cli_inputs, tmp_path, capsys, monkeypatch)


# Regression examples of bugs in files owned elsewhere (see the fuzzing report): these stay red
# until the owner's fix lands, and then keep it fixed.
@pytest.mark.parametrize("name, faults", [
    ("compress", (Fault("--out", ("--out", "x" * 300)),)),  # atomic.staged_output_dir: OSError escapes
    ("compress", (Fault("--data", ("--data", "sys:exit")),)),  # data function calling sys.exit ends main
    ("bench", (Fault("--against", ("--against", "inputs/junk.bin")),)),  # --against is never parsed first
    ("bench", (Fault("onnx", ("inputs/empty.pt",)),)),  # an empty file parses as an empty ONNX model
    ("compress", (Fault("--out", ("--out", "a\x00b")),)),  # a NUL byte in --out (API callers)
    ("apply", (Fault("--out", ("--out", "inputs/junk.bin/out")),)),  # FileExistsError from mkdir escapes
    # labels beyond the model's 10 outputs: IndexError from cross-entropy in the taylor criterion
    ("compress", (Fault("--data", ("--data", "inputs/big_labels.npz", "--criterion", "taylor")),)),
], ids=["out-name-too-long", "data-sys-exit", "bench-against-junk", "bench-empty-onnx", "out-nul-byte",
        "out-below-a-file", "labels-beyond-outputs"])
def test_invalid_invocations_found_by_fuzzing(name, faults, cli_inputs, tmp_path, capsys, monkeypatch) -> None:
    check_invalid_invocation(name, faults, cli_inputs, tmp_path, capsys, monkeypatch)


def test_the_faultless_invocation_exits_0_and_writes_only_out(cli_inputs, tmp_path, capsys, monkeypatch) -> None:
    """The faults are what fails: without them the same command succeeds and writes exactly --out."""
    monkeypatch.chdir(tmp_path)
    argv = build_argv("compress", (), cli_inputs)
    before = snapshot(cli_inputs)
    outcome = run_main(argv, capsys)
    assert outcome.code == 0, outcome.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert {"plan.json", "state_dict.pt", "model.pt2", "report.json"} <= {p.name for p in (tmp_path / "out").iterdir()}
    assert snapshot(cli_inputs) == before


SUBPROCESS_CASES = {
    "bad-ratio": ("compress", (Fault("--ratio", ("--ratio", "nan")),)),
    "junk-model": ("compress", (Fault("model", ("inputs/junk.bin",)),)),
}


@pytest.fixture(scope="module")
def process_runs(cli_inputs, tmp_path_factory) -> tuple[dict[str, tuple[list[str], Path, Outcome]], dict]:
    """SUBPROCESS_CASES as real processes, each in its own empty folder; also the inputs' hashes before."""
    before = snapshot(cli_inputs)
    jobs = {name: (build_argv(*case, cli_inputs), tmp_path_factory.mktemp(name)) for name, case in
            SUBPROCESS_CASES.items()}
    outcomes = run_cli_many(jobs)
    return {name: (*jobs[name], outcomes[name]) for name in jobs}, before


@pytest.mark.parametrize("case", sorted(SUBPROCESS_CASES))
def test_invalid_invocations_as_a_real_process(case, process_runs, cli_inputs) -> None:
    runs, inputs_before = process_runs
    argv, cwd, outcome = runs[case]
    assert_refused(outcome, argv)
    assert list(cwd.iterdir()) == []
    assert snapshot(cli_inputs) == inputs_before
