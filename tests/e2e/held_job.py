"""A `structprune compress` job held at a known point, for the tests that interrupt it (Ctrl-C, SIGTERM).

The job compresses a user's model (`--arch held_net:make` and its state_dict) whose forward, once its
hidden layer is narrower than it was built, creates `pruned-forward-reached` beside its module and then
sleeps. Only a pruned model is that narrow, and the job builds and verifies the pruned model inside its
staging folder, before it writes any artifact; so once the file exists the job is inside
`staged_output_dir`, and it stays there until a signal ends the sleep. The moment of the signal is a
point in the job, not a time, whatever the machine's speed; the library has no test-only hook.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

HIDDEN = 16
REACHED = "pruned-forward-reached"
HELD_NET = f'''\
"""A user's MLP whose forward, once pruned, says so ({REACHED!r} beside this file) and sleeps."""
import time
from pathlib import Path

import torch
from torch import nn


class HeldNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, {HIDDEN}), nn.Linear({HIDDEN}, 4)

    def forward(self, x):
        if self.fc1.out_features < {HIDDEN}:
            Path(__file__).with_name({REACHED!r}).touch()
            time.sleep(300)
        return self.fc2(torch.relu(self.fc1(x)))


def make():
    return HeldNet()
'''
REACH_TIMEOUT_S = 240
EXIT_TIMEOUT_S = 120


def held_net_files(folder: Path) -> Path:
    """Write the model's module and state_dict into `folder` (not the job's folder); returns the state_dict."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "held_net.py").write_text(HELD_NET)
    namespace: dict = {}
    exec(compile(HELD_NET, "held_net.py", "exec"), namespace)  # the same class the job imports
    torch.manual_seed(0)
    torch.save(namespace["make"]().state_dict(), folder / "net_state.pt")
    return folder / "net_state.pt"


def interrupt_held_compress(base: Path, extra: list[str], signum: int = signal.SIGINT
                            ) -> tuple[subprocess.CompletedProcess, Path]:
    """Run `structprune compress` on the held model in `base/job` (created if missing, so a test can put
    a previous `out` there first), send `signum` once the pruned model's forward is reached, and wait for
    the exit. Returns the finished process and the job's folder, which holds only what the job left."""
    state, job = held_net_files(base / "model"), base / "job"
    job.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "structprune", "compress", str(state), "--arch", "held_net:make",
           "--input-shape", "1,8", "--out", "out", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(
        p for p in (str(state.parent), os.environ.get("PYTHONPATH", "")) if p))
    env.pop("PYTHONSTARTUP", None)
    proc = subprocess.Popen(cmd, cwd=job, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(state.parent / REACHED, proc)
        assert list(job.glob(".out.staging-*")), "the pruned model ran outside the staging folder"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=EXIT_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr), job


def _wait_for(marker: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + REACH_TIMEOUT_S
    while not marker.exists():
        assert proc.poll() is None, f"the job exited before its pruned model ran: {proc.communicate()}"
        assert time.monotonic() < deadline, f"the pruned model's forward was not reached in {REACH_TIMEOUT_S} s"
        time.sleep(0.02)
