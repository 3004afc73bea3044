"""Fuzzing model files: damaged, crafted and code-carrying files are refused and never run code.

Starting from a valid zoo:mlp state_dict (`torch.save(model.state_dict())`, zip and legacy format)
and a `.pt2` (`structprune.capture.deploy.save_pt2`), each case builds one file (see fuzz_files, fuzz_pt2_files):
truncated, bit-flipped, with wrong dtypes, NaN/Inf or mis-shaped weights, a crafted huge tensor, zip
entries that leave the archive's folder or repeat, a pickle whose `__reduce__` runs code, or a `.pt2`
whose program JSON or layout makes torch evaluate code. Then `inspect` or `compress` runs on it
in-process (no --trust-pickle) and, whatever the file, the same properties hold as in test_fuzz_cli:
exit 2 with one `structprune: error:` line (exit 0 only where the file is still valid), nothing
written, the input byte-identical, the marker file that the file's code would create absent, and no
archive entry extracted anywhere.
"""
from __future__ import annotations

import io
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from fuzz_files import (
    MARKER,
    RESHAPES,
    Mutant,
    Mutation,
    Originals,
    bit_flipped,
    crafted_storage,
    entry_trick,
    non_finite,
    pickled_code,
    reshaped,
    retyped,
    truncated,
)
from fuzz_harness import (
    Outcome,
    assert_refused,
    fresh_folder,
    fuzz_settings,
    run_cli_many,
    run_main,
    snapshot,
    write_mlp_files,
)
from fuzz_pt2_files import PT2_PICKLES, pt2_damaged_entry, pt2_pickled_code, pt2_program_code
from hypothesis import example, given
from hypothesis import strategies as st

DEFAULT_FILE_CASES = 120
SLOW_FILE_CASES = 1200
ARTIFACTS = {"plan.json", "state_dict.pt", "model.pt2", "report.json"}


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> Originals:
    """zoo:mlp saved the three ways users save it: state_dict (zip and legacy format) and .pt2."""
    folder = tmp_path_factory.mktemp("originals")
    paths = write_mlp_files(folder)
    buffer = io.BytesIO()
    torch.save(torch.load(paths["state"], weights_only=True), buffer, _use_new_zipfile_serialization=False)
    return Originals(paths["state"].read_bytes(), buffer.getvalue(), paths["pt2"].read_bytes())


BUILDERS: dict[str, Callable[[Mutation, Originals, Path], Mutant]] = {
    "truncate": truncated, "flip": bit_flipped, "dtype": retyped, "non_finite": non_finite,
    "reshape": reshaped, "crafted": crafted_storage, "entry": entry_trick, "pickle": pickled_code,
    "pt2_pickle": pt2_pickled_code, "pt2_program": pt2_program_code, "pt2_entry": pt2_damaged_entry,
}


def mutations() -> st.SearchStrategy[Mutation]:
    """Every kind of damaged or crafted file, with the parameters its builder takes."""
    unit = st.floats(0.0, 1.0, exclude_max=True)
    flips = st.lists(st.tuples(unit, st.integers(0, 7)), min_size=1, max_size=8).map(tuple)
    key = st.integers(0, 5)
    return st.one_of(
        st.builds(Mutation, st.just("truncate"), st.sampled_from(["state", "legacy", "pt2"]), st.tuples(unit)),
        st.builds(Mutation, st.just("flip"), st.sampled_from(["state", "pt2"]), flips),
        st.builds(Mutation, st.just("dtype"), st.just("state"), st.tuples(key, st.sampled_from(
            ["int64", "int32", "int8", "uint8", "bool", "complex64", "float16", "bfloat16", "float64"]))),
        st.builds(Mutation, st.just("non_finite"), st.just("state"),
                  st.tuples(key, st.sampled_from(["nan", "inf", "-inf"]), unit)),
        st.builds(Mutation, st.just("reshape"), st.just("state"), st.tuples(key, st.sampled_from(sorted(RESHAPES)))),
        st.builds(Mutation, st.just("crafted"), st.just("state"), st.sampled_from([
            (10**12, (2, 2), (2, 1)), (4, (10**9, 10**9), (10**9, 1)), (4, (2**62, 2**62), (1, 1)),
            (4, (-1, 4), (4, 1)), (4, (128, 64), (0, 0)), (-5, (2, 2), (2, 1))]).map(tuple)),
        st.builds(Mutation, st.just("entry"), st.sampled_from(["state", "pt2"]), st.tuples(st.sampled_from(
            ["dotdot", "inner_dotdot", "absolute", "backslash", "nul", "root_escape", "duplicate", "second_root"]))),
        st.builds(Mutation, st.just("pickle"), st.just("state"), st.tuples(
            st.sampled_from(["value", "top_level", "checkpoint", "legacy"]),
            st.sampled_from(["system", "open", "exec"]))),
        st.builds(Mutation, st.just("pt2_pickle"), st.just("pt2"), st.tuples(
            st.sampled_from(sorted(PT2_PICKLES)), st.sampled_from(["system", "open", "exec"]))),
        st.builds(Mutation, st.just("pt2_program"), st.just("pt2"), st.tuples(st.sampled_from(
            ["expr_str", "guards_code", "forward_arg_names", "system_node", "from_file", "aoti"]))),
        st.builds(Mutation, st.just("pt2_entry"), st.just("pt2"), st.tuples(st.sampled_from(
            ["models/model.json", "model_weights_config.json", "archive_version", "sample_inputs/model.pt",
             "weights/weight_0", "archive_format"]), unit)),
    )


# ----------------------------------------------------------------------------------------------
# the check


def check_model_file(mutation: Mutation, command: str, originals: Originals, parent: Path,
                     capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Build the file, run the command on it in a fresh cwd, assert the properties of the docstring."""
    case = fresh_folder(parent)
    inputs, cwd = case / "in", case / "work"
    inputs.mkdir()
    cwd.mkdir()
    mutant = BUILDERS[mutation.kind](mutation, originals, case)
    path = inputs / ("model.pt2" if mutation.base == "pt2" else "model.pt")
    path.write_bytes(mutant.data)
    argv = [command, str(path), *([] if mutation.base == "pt2" else ["--arch", "zoo:mlp"])]
    argv += ["--no-onnx", "--no-recapture", "--out", "out"] if command == "compress" else []
    before = snapshot(inputs)
    monkeypatch.chdir(cwd)
    outcome = run_main(argv, capsys)
    assert outcome.code in mutant.codes, f"{mutation}: exit {outcome.code}, wanted {set(mutant.codes)}; " \
                                         f"stderr={outcome.stderr!r}"
    written = sorted(p.name for p in cwd.iterdir())
    if outcome.code == 0:
        assert "Traceback" not in outcome.stderr
        assert written == (["out"] if command == "compress" else []), f"{mutation}: wrote {written}"
        assert command != "compress" or ARTIFACTS <= {p.name for p in (cwd / "out").iterdir()}
    else:
        assert_refused(outcome, argv)
        assert written == [], f"{mutation}: a refused run wrote {written}"
    assert snapshot(inputs) == before, f"{mutation}: the input changed or files appeared next to it"
    assert not (case / MARKER).exists(), f"{mutation}: code from the file ran without --trust-pickle"
    escaped = [p for p in escape_targets(case) if p.exists()]
    assert not escaped, f"{mutation}: archive entries were extracted to {escaped}"


def escape_targets(case: Path) -> list[Path]:
    """Where the entry names of `entry_trick` would land if anything extracted them."""
    folders = [case, case / "in", case / "work", case.parent, Path(tempfile.gettempdir())]
    return [folder / name for folder in folders for name in ("evil", "evil_abs", "evil_root")]


commands = st.sampled_from(["inspect", "inspect", "compress"])


# Cases that ran code or leaked a traceback before the fixes in io/ (kept as regression examples).
@example(mutation=Mutation("pt2_pickle", "pt2", ("legacy_layout", "system")), command="inspect")
@example(mutation=Mutation("pt2_pickle", "pt2", ("legacy_weights", "open")), command="inspect")
@example(mutation=Mutation("entry", "pt2", ("duplicate",)), command="inspect")
@example(mutation=Mutation("pt2_program", "pt2", ("expr_str",)), command="inspect")
@example(mutation=Mutation("pt2_program", "pt2", ("guards_code",)), command="inspect")
@example(mutation=Mutation("pt2_program", "pt2", ("forward_arg_names",)), command="inspect")
@example(mutation=Mutation("pt2_program", "pt2", ("aoti",)), command="inspect")
@example(mutation=Mutation("flip", "state", ((0.5, 3),)), command="compress")  # silent weight damage
@example(mutation=Mutation("dtype", "state", (0, "int64")), command="compress")
@example(mutation=Mutation("non_finite", "state", (0, "nan", 0.0)), command="compress")
@example(mutation=Mutation("dtype", "state", (1, "float16")), command="inspect")
@example(mutation=Mutation("flip", "state", ((0.99053531322723, 4), (0.7625594257064533, 6), (0.9582958989752138, 4),
                                             (0.5820050329123965, 4), (0.9582651358258095, 7),
                                             (0.7625594257064533, 7), (0.5417787103231633, 2),
                                             (0.99053531322723, 7))), command="inspect")  # a non-UTF-8 name
@example(mutation=Mutation("pt2_entry", "pt2", ("weights/weight_0", 1e-38)), command="compress")  # read as zeros
@given(mutation=mutations(), command=commands)
@fuzz_settings(DEFAULT_FILE_CASES)
def test_damaged_and_crafted_model_files_are_refused(mutation, command, originals, tmp_path, capsys,
                                                     monkeypatch) -> None:
    check_model_file(mutation, command, originals, tmp_path, capsys, monkeypatch)


@pytest.mark.slow
@given(mutation=mutations(), command=commands)
@fuzz_settings(SLOW_FILE_CASES)
def test_damaged_and_crafted_model_files_many(mutation, command, originals, tmp_path, capsys, monkeypatch) -> None:
    check_model_file(mutation, command, originals, tmp_path, capsys, monkeypatch)


def test_trusted_pickle_does_run_the_file_code(originals, tmp_path, capsys) -> None:
    """The marker check is not vacuous: with --trust-pickle the same file's code does run."""
    path = tmp_path / "model.pt"
    path.write_bytes(pickled_code(Mutation("pickle", "state", ("checkpoint", "open")), originals, tmp_path).data)
    outcome = run_main(["inspect", str(path), "--arch", "zoo:mlp", "--trust-pickle"], capsys)
    assert outcome.code == 0, outcome.stderr
    assert (tmp_path / MARKER).exists()


@pytest.mark.parametrize("text, plain", [
    ("Symbol('s77', positive=True, integer=True)", True),  # what torch 2.13 writes for a free batch
    ("Mul(Integer(64), Symbol('s53', positive=True, integer=True))", True),
    ("L['attention_mask'].size()[0] == L['input_ids'].size()[0]", True),  # a BERT export's guards
    ("L['input_ids'].size()[1] <= 16", True),
    ("FloorDiv(s0, 2) + Mod(s1, 8) >= -1", True),
    ("__import__('os').system('id')", False),
    ("Symbol('s0').__class__", False),
    ("L['x'] == '\\') or print(1) or ('", False),  # a quote would break out of the generated guard literal
    ("exec(chr(105))", False),
    ("s0; import os", False),
    (7, False),
])
def test_program_strings_torch_writes_pass_and_code_does_not(text, plain) -> None:
    from structprune.io.pt2_program import is_plain_expression

    assert is_plain_expression(text) is plain


def test_a_state_dict_saved_without_checksums_still_loads(originals, tmp_path, capsys) -> None:
    """The CRC check skips entries torch wrote with checksums turned off (CRC field 0)."""
    torch.serialization.set_crc32_options(False)
    try:
        torch.save(torch.load(io.BytesIO(originals.state), weights_only=True), tmp_path / "model.pt")
    finally:
        torch.serialization.set_crc32_options(True)
    outcome = run_main(["inspect", str(tmp_path / "model.pt"), "--arch", "zoo:mlp"], capsys)
    assert outcome.code == 0, outcome.stderr


# ----------------------------------------------------------------------------------------------
# a whole module pickled from a class that cannot be imported (issue 10, part 4)

SCRIPT = """
import sys, torch

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)

torch.save(Net(), sys.argv[1])
"""
MODULE = SCRIPT.replace("torch.save(Net(), sys.argv[1])", "")


def save_in_subprocess(cwd: Path, script: str, target: Path) -> None:
    (cwd / "save.py").write_text(textwrap.dedent(script))
    subprocess.run([sys.executable, "save.py", str(target)], cwd=cwd, check=True, capture_output=True, timeout=120)


def test_main_class_pickle_hints_at_pythonpath_and_pt2(tmp_path, capsys) -> None:
    save_in_subprocess(tmp_path, SCRIPT, tmp_path / "whole.pt")
    argv = ["inspect", str(tmp_path / "whole.pt"), "--trust-pickle", "--input-shape", "1,4"]
    line = assert_refused(run_main(argv, capsys), argv)
    assert "class Net was defined in the script that saved the file (__main__)" in line
    assert "PYTHONPATH" in line and "torch.export" in line and ".pt2" in line
    untrusted = assert_refused(run_main(argv[:2], capsys), argv[:2])
    assert "__main__.Net" in untrusted and "--trust-pickle" in untrusted


def test_missing_module_pickle_hints_at_its_folder_and_loads_once_importable(tmp_path, capsys,
                                                                             monkeypatch) -> None:
    package = tmp_path / "project"
    package.mkdir()
    (package / "fuzz_user_net.py").write_text(textwrap.dedent(MODULE))
    save_in_subprocess(package, "import sys, torch, fuzz_user_net\ntorch.save(fuzz_user_net.Net(), sys.argv[1])\n",
                       tmp_path / "whole.pt")
    argv = ["inspect", str(tmp_path / "whole.pt"), "--trust-pickle", "--input-shape", "1,4"]
    line = assert_refused(run_main(argv, capsys), argv)
    assert "module 'fuzz_user_net'" in line and "PYTHONPATH" in line and ".pt2" in line
    monkeypatch.syspath_prepend(str(package))  # following the hint makes the same command work
    outcome = run_main(argv, capsys)
    assert outcome.code == 0, outcome.stderr
    assert "params" in outcome.stdout


# ----------------------------------------------------------------------------------------------
# real processes: exit codes and stderr as a user sees them (torch's own logging included)

PROCESS_CASES = {
    "pickle-runs-code": Mutation("pickle", "state", ("value", "system")),
    "pt2-missing-sample-inputs": Mutation("pt2_entry", "pt2", ("sample_inputs/model.pt", 0.0)),  # torch logs
}


@pytest.fixture(scope="module")
def process_runs(originals, tmp_path_factory) -> dict[str, tuple[list[str], Path, dict, Outcome]]:
    """PROCESS_CASES run as `python -m structprune compress FILE`, two at a time."""
    jobs, cases = {}, {}
    for name, mutation in PROCESS_CASES.items():
        case = tmp_path_factory.mktemp(name)
        path = case / "in" / ("model.pt2" if mutation.base == "pt2" else "model.pt")
        path.parent.mkdir()
        path.write_bytes(BUILDERS[mutation.kind](mutation, originals, case).data)
        (case / "work").mkdir()
        argv = ["compress", str(path), *([] if mutation.base == "pt2" else ["--arch", "zoo:mlp"]), "--no-onnx",
                "--out", "out"]
        jobs[name], cases[name] = (argv, case / "work"), (case, snapshot(path.parent))
    outcomes = run_cli_many(jobs)
    return {name: (jobs[name][0], *cases[name], outcomes[name]) for name in jobs}


@pytest.mark.parametrize("name", sorted(PROCESS_CASES))
def test_model_files_in_a_real_process(name, process_runs) -> None:
    """Real exit code and stderr: torch's own logged traceback for a damaged .pt2 must not show."""
    argv, case, inputs_before, outcome = process_runs[name]
    assert_refused(outcome, argv)
    assert list((case / "work").iterdir()) == [] and snapshot(case / "in") == inputs_before
    assert not (case / MARKER).exists()
