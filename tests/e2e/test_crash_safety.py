"""Crash safety: `structprune compress` killed with SIGKILL never leaves a partial output folder, a
half-written checkpoint or a growing pile of leftovers, and `--resume` after a kill during recovery
ends with the weights of an uninterrupted run.

Kills are aimed at named stages of a real CLI job (a digits CNN with 3 recovery epochs and a
checkpoint folder) by polling what the job writes: its staging folder (`compress` starts), a checkpoint
written by this run (`recovery` is under way), plan.json in the staging folder (`export`: model files,
ONNX export, parity, latency) and report.json (`final write`: reports, then the rename). Each kill waits
a seeded fraction of that stage's length in an uninterrupted reference run, measured once per test. The
stage a kill landed in is what the poller saw just before it. Exact points inside the atomic writers
(between the two renames of a `--force` replace, half-way through a file) are hit by child processes
that kill themselves there.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import pytest
import torch

from structprune.errors import UsageError
from structprune.io import staged_output_dir, write_atomically
from structprune.recover.checkpoint import (
    Checkpoint,
    checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)

EPOCHS = 3
JOB = ["compress", "zoo:cnn", "--arch-kwargs", '{"in_chans":1,"image_size":8}', "--data", "digits",
       "--finetune-epochs", str(EPOCHS), "--batch-size", "16", "--checkpoint-dir", "ck", "--out", "out", "--force"]
ARTIFACTS = {"model.onnx", "model.pt2", "state_dict.pt", "plan.json", "report.json", "report.md", "report.png"}
STAGES = ("load", "compress", "recovery", "export", "final write")
AFTER = ("written", "finished")  # the output was renamed into place / the process had exited
POLL_S = 0.005
RUN_TIMEOUT_S = 300
LEFTOVER = re.compile(r"^\.out\.(staging|old)-(\d+)-")


def cli_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("PYTHONSTARTUP", None)
    return env


@dataclass
class Job:
    """One `structprune compress` process in `cwd`, and the furthest stage the poller has seen it in."""

    cwd: Path
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen = field(init=False)
    started_ns: int = field(init=False)
    reached: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.started_ns = time.time_ns()
        self.proc = subprocess.Popen([sys.executable, "-m", "structprune", *JOB, *self.extra], cwd=self.cwd,
                                     env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     start_new_session=True)

    def stage(self) -> str:
        """Look at the files now; stages only move forward."""
        if self.proc.poll() is not None:
            return "finished"
        self.reached = max(self.reached, self._stage_index())
        return (*STAGES, "written")[self.reached]

    def _stage_index(self) -> int:
        staging = next(self.cwd.glob(f".out.staging-{self.proc.pid}-*"), None)
        if staging is None:
            return 5 if self.reached >= 1 else 0
        if (staging / "report.json").exists():
            return 4
        if (staging / "plan.json").exists():
            return 3
        return 2 if self.wrote_checkpoint() else 1

    def wrote_checkpoint(self) -> bool:
        try:
            return (self.cwd / "ck" / "recovery-last.pt").stat().st_mtime_ns >= self.started_ns
        except FileNotFoundError:
            return False

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):  # it may have exited on its own
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def finish(self) -> None:
        _, stderr = self.proc.communicate(timeout=RUN_TIMEOUT_S)
        assert self.proc.returncode == 0, stderr.decode()


@dataclass(frozen=True)
class Reference:
    """An uninterrupted run: how long each stage took, and the weights and plan it wrote."""

    durations: dict[str, float]
    state: dict[str, torch.Tensor]
    plan: bytes


def run_reference(cwd: Path) -> Reference:
    cwd.mkdir()
    job, seen = Job(cwd), {}
    t0 = time.monotonic()
    while (stage := job.stage()) != "finished":
        seen.setdefault(stage, time.monotonic() - t0)
        time.sleep(POLL_S)
    job.finish()
    seen.setdefault("written", time.monotonic() - t0)
    assert set(STAGES) <= set(seen), f"the reference run skipped a stage: {seen}"
    ends = [seen[s] for s in (*STAGES[1:], "written")]
    durations = {s: end - seen[s] for s, end in zip(STAGES, ends)}
    out = cwd / "out"
    return Reference(durations, torch.load(out / "state_dict.pt", weights_only=True), (out / "plan.json").read_bytes())


def kill_in(cwd: Path, aimed: str, fraction: float, ref: Reference) -> tuple[str, int]:
    """Start a job, wait until it reaches `aimed`, then `fraction` of that stage's reference length,
    and SIGKILL it. Returns the stage it was in, and its pid."""
    job = Job(cwd)
    try:
        while job.stage() not in (aimed, *STAGES[STAGES.index(aimed) + 1:], *AFTER):
            time.sleep(POLL_S)
        deadline = time.monotonic() + fraction * ref.durations[aimed]
        while time.monotonic() < deadline and job.stage() != "finished":
            time.sleep(POLL_S)
        landed = job.stage()
    finally:
        job.kill()
    return landed, job.proc.pid


def kill_points(per_stage: int, seed: int) -> list[tuple[str, float]]:
    """`per_stage` kills per stage at seeded fractions of the stage, in a seeded order."""
    rng = random.Random(seed)
    points = [(stage, rng.uniform(0.05, 0.5)) for stage in STAGES for _ in range(per_stage)]
    rng.shuffle(points)
    return points


# --- what must hold after every kill ----------------------------------------------------------

def assert_complete_or_absent(out: Path, ref: Reference) -> None:
    if not out.exists():
        return
    assert {p.name for p in out.iterdir()} == ARTIFACTS, sorted(p.name for p in out.iterdir())
    assert json.loads((out / "report.json").read_text())["verification"]["ok"] is True
    assert (out / "report.md").read_text().strip()
    assert (out / "report.png").read_bytes().endswith(b"IEND\xaeB`\x82")
    assert zipfile.ZipFile(out / "model.pt2").testzip() is None
    onnx.checker.check_model(onnx.load(str(out / "model.onnx")))
    assert (out / "plan.json").read_bytes() == ref.plan
    assert_same_weights(torch.load(out / "state_dict.pt", weights_only=True), ref.state)


def assert_same_weights(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert state.keys() == expected.keys()
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor), key


def checkpoint_epochs(ck: Path) -> int | None:
    """Epochs done by the checkpoint in `ck` (None without one); it must load whole, weights only."""
    path = ck / "recovery-last.pt"
    if not path.exists():
        return None
    epochs = torch.load(path, weights_only=True)["epochs_done"]
    assert 1 <= epochs <= EPOCHS
    return epochs


def leftover_pids(cwd: Path) -> set[int]:
    """Owners of the hidden staging / set-aside folders next to `out`; fails on any other hidden entry."""
    pids = set()
    for entry in cwd.glob(".*"):
        match = LEFTOVER.match(entry.name)
        assert match, f"unexpected leftover {entry.name}"
        pids.add(int(match.group(2)))
    return pids


def assert_no_leftovers(cwd: Path) -> None:
    hidden = [p.relative_to(cwd) for p in cwd.rglob(".*")]
    assert hidden == [], hidden


# --- the kill sequence ------------------------------------------------------------------------

def resume_and_compare(cwd: Path, ref: Reference) -> None:
    """Resume the killed job; the first checkpoint it saves is the epoch after the killed one's."""
    done = checkpoint_epochs(cwd / "ck")
    job, first_saved = Job(cwd, ("--resume",)), None
    while first_saved is None and job.proc.poll() is None:
        if job.wrote_checkpoint():
            first_saved = checkpoint_epochs(cwd / "ck")
        time.sleep(POLL_S)
    job.finish()
    assert first_saved == (done + 1 if done < EPOCHS else None)
    assert_same_weights(torch.load(cwd / "out" / "state_dict.pt", weights_only=True), ref.state)


def run_kill_sequence(tmp_path: Path, points: list[tuple[str, float]]) -> Counter:
    """Kill one job per point in the same folder; returns how many kills landed in each stage."""
    ref = run_reference(tmp_path / "reference")
    cwd = tmp_path / "crash"
    cwd.mkdir()
    landed, sweeper, resumed = Counter(), None, False
    for aimed, fraction in points:
        stage, pid = kill_in(cwd, aimed, fraction, ref)
        landed[stage] += 1
        sweeper = pid if stage != "load" else sweeper  # a job that staged had removed older leftovers first
        assert_complete_or_absent(cwd / "out", ref)
        assert leftover_pids(cwd) <= {sweeper}, (stage, leftover_pids(cwd), sweeper)
        assert len(list((cwd / "ck").glob(".*.tmp"))) <= 1
        resumed = stage == "recovery"
        if resumed:
            assert checkpoint_epochs(cwd / "ck") is not None
            resume_and_compare(cwd, ref)
    if not resumed:  # the last job was killed: one more, uninterrupted, must clean up after it
        Job(cwd).finish()
    assert_complete_or_absent(cwd / "out", ref)
    assert_no_leftovers(cwd)
    print(f"kills by stage: {dict(landed)}; reference stage lengths (s): "
          f"{ {s: round(d, 2) for s, d in ref.durations.items()} }")
    return landed


@pytest.mark.slow  # about 80 s (six CLI jobs); CI runs it in `make test-slow`
def test_sigkill_at_each_stage_leaves_a_complete_output_or_none(tmp_path: Path) -> None:
    points = [(stage, 0.2) for stage in ("load", "compress", "export", "final write", "recovery")]
    landed = run_kill_sequence(tmp_path, points)
    assert sum(landed.values()) == 5 and landed["recovery"] >= 1
    assert set(STAGES) <= set(landed), landed


@pytest.mark.slow
def test_sigkill_at_25_seeded_points(tmp_path: Path) -> None:
    landed = run_kill_sequence(tmp_path, kill_points(per_stage=5, seed=2024))
    assert sum(landed.values()) == 25 and landed["recovery"] >= 3
    assert set(STAGES) <= set(landed), landed


# --- exact points inside the atomic writers ---------------------------------------------------

KILL_SELF = textwrap.dedent('''
    import os, shutil, signal, sys, time
    from pathlib import Path
    from structprune.io import staged_output_dir, write_atomically

    out, where = Path(sys.argv[1]), sys.argv[2]
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    rename, rmtree = os.rename, shutil.rmtree

    def rename_then_die(src, dst):
        rename(src, dst)
        if where == "between renames" and ".old-" in str(dst):
            die()

    def rmtree_halfway(path, **kw):
        if where == "removing the old output" and ".old-" in str(path):
            next(Path(path).iterdir()).unlink()
            die()
        rmtree(path, **kw)

    os.rename, shutil.rmtree = rename_then_die, rmtree_halfway
    if where == "half-written file":
        write_atomically(out / "model.onnx", lambda stream: (stream.write(b"half"), stream.flush(), die()))
    with staged_output_dir(out, force=True) as staging:
        (staging / "model.onnx").write_bytes(b"new")
        (staging / "report.json").write_bytes(b"{}")
        if where == "filling staging":
            die()
        if where == "staging, alive":
            print("staged", flush=True)
            sys.stdin.read()
''')


def start_child(out: Path, where: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", KILL_SELF, str(out), where], env=cli_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def previous_output(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"old")
    return out


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("where, survivor", [("filling staging", {"model.onnx": b"old"}),
                                             ("half-written file", {"model.onnx": b"old"}),
                                             ("between renames", {"model.onnx": b"old"}),
                                             ("removing the old output", {"model.onnx": b"new", "report.json": b"{}"})])
def test_next_writer_recovers_from_a_kill_inside_the_atomic_writers(tmp_path: Path, where: str, survivor) -> None:
    out = previous_output(tmp_path)
    child = start_child(out, where)
    child.communicate(timeout=RUN_TIMEOUT_S)
    assert child.returncode == -signal.SIGKILL
    assert list(tmp_path.rglob(".*")), "the kill left nothing to clean up"
    # a new run sweeps, then fails: the output folder must be what survived the kill
    with pytest.raises(RuntimeError, match="abandon"), staged_output_dir(out, force=True):
        raise RuntimeError("abandon this run")
    write_atomically(out / "model.onnx", lambda stream: stream.write(contents(out)["model.onnx"]))
    assert contents(out) == survivor
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


def test_a_live_writers_staging_is_left_alone(tmp_path: Path) -> None:
    out = previous_output(tmp_path)
    child = start_child(out, "staging, alive")
    try:
        assert child.stdout.readline() == "staged\n"
        live = [p for p in tmp_path.iterdir() if p.name.startswith(".out.staging-")]
        with staged_output_dir(out, force=True) as staging:
            (staging / "model.onnx").write_bytes(b"mine")
        assert all(p.is_dir() for p in live) and len(live) == 1
    finally:
        child.communicate(input="", timeout=RUN_TIMEOUT_S)
    assert child.returncode == 0
    assert contents(out) == {"model.onnx": b"new", "report.json": b"{}"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_truncated_checkpoint_is_a_usage_error(tmp_path: Path) -> None:
    """What a non-atomic writer killed mid-save would leave: refused with advice, never loaded."""
    save_checkpoint(tmp_path, Checkpoint(1, {"w": torch.ones(3)}, {}, (), {"seed": 0}))
    path = checkpoint_path(tmp_path)
    assert load_checkpoint(tmp_path, {"seed": 0}).epochs_done == 1
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UsageError, match="cannot be read.*--resume"):
        load_checkpoint(tmp_path, {"seed": 0})
    assert [p.name for p in tmp_path.iterdir()] == ["recovery-last.pt"]
