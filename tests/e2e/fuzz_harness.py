"""Shared by the fuzz tests: run the CLI in-process or as a process, and check a refusal.

Properties every refused run must have: the exit code asked for, exactly one stderr line starting
`structprune: error:` and no traceback. `snapshot` hashes a folder so a test can prove nothing was
written or changed there.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
import torch
from hypothesis import HealthCheck, settings
from onnx import TensorProto, helper

import models_zoo
from structprune.capture.deploy import save_pt2
from structprune.cli import main

ERROR_PREFIX = "structprune: error: "
SUBPROCESS_TIMEOUT_S = 120
PARALLEL_PROCESSES = 2  # the machine has 2 cores; each process imports torch (seconds) before it fails


def fuzz_settings(max_examples: int) -> settings:
    """Deterministic (derandomized, no example database written into the cwd), no deadline."""
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@dataclass(frozen=True)
class Outcome:
    """What one CLI run returned and printed."""

    code: int
    stdout: str
    stderr: str


def run_main(argv: list[str], capsys: pytest.CaptureFixture) -> Outcome:
    """`main(argv)`; an exception or SystemExit escaping it fails the test (it would print a traceback)."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        raise AssertionError(f"main({argv!r}) raised SystemExit({exc.code!r}) instead of returning") from exc
    except Exception as exc:  # noqa: BLE001 - the finding itself
        raise AssertionError(f"main({argv!r}) let {type(exc).__name__}: {exc} escape (a traceback)") from exc
    out, err = capsys.readouterr()
    return Outcome(code, out, err)


def run_cli(argv: list[str], cwd: Path) -> Outcome:
    """`python -m structprune ARGV` in `cwd` (real exit code and stderr, logging included)."""
    root = Path(__file__).resolve().parents[2]  # the repository: tests/e2e/ is two folders below it
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    proc = subprocess.run([sys.executable, "-m", "structprune", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=SUBPROCESS_TIMEOUT_S)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def run_cli_many(jobs: dict[str, tuple[list[str], Path]]) -> dict[str, Outcome]:
    """run_cli for every (argv, cwd), two at a time."""
    with ThreadPoolExecutor(PARALLEL_PROCESSES) as pool:
        futures = {name: pool.submit(run_cli, argv, cwd) for name, (argv, cwd) in jobs.items()}
    return {name: future.result() for name, future in futures.items()}


def assert_refused(outcome: Outcome, argv: list[str]) -> str:
    """Exit code 2 and stderr exactly one `structprune: error:` line, no traceback; returns that line."""
    assert outcome.code == 2, f"{argv!r}: exit {outcome.code}, wanted 2; stderr={outcome.stderr!r}"
    assert "Traceback" not in outcome.stderr, f"{argv!r}: traceback on stderr:\n{outcome.stderr}"
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), \
        f"{argv!r}: stderr must be one '{ERROR_PREFIX}...' line, got {outcome.stderr!r}"
    return lines[0]


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under `folder` (folders as '<dir>')."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
            for p in sorted(folder.rglob("*"))}


def fresh_folder(parent: Path) -> Path:
    """A new empty folder under `parent` (hypothesis reuses one tmp_path for all examples)."""
    return Path(tempfile.mkdtemp(dir=parent))


def tiny_onnx(path: Path) -> Path:
    """A one-node Relu model with a symbolic batch: enough for `structprune bench`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    onnx.save(helper.make_model(graph), path)
    return path


def write_mlp_files(folder: Path) -> dict[str, Path]:
    """zoo:mlp as a state_dict .pt and as a .pt2 (the two file formats a user hands over)."""
    torch.manual_seed(0)
    model = models_zoo.create("mlp").eval()
    paths = {"state": folder / "mlp_state.pt", "pt2": folder / "mlp.pt2"}
    torch.save(model.state_dict(), paths["state"])
    save_pt2(model, models_zoo.example_inputs("mlp", batch=1), paths["pt2"])
    return paths
