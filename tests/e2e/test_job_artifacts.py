"""End to end, as a user's CI step: a user's own model and `module:function` data; every artifact
is read back before publishing, and `--max-accuracy-drop` never passes silently."""
from __future__ import annotations

import copy
import json
import signal
from pathlib import Path

import pytest
import torch
from held_job import interrupt_held_compress

import structprune.pipeline as pipeline
from structprune.cli import main

USER_PACKAGE = '''\
"""A user's model and data, written as the README describes (module:function returning loaders)."""
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def make_net():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10))


def _tensors():
    digits = load_digits()
    return torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0, torch.tensor(digits.target)


def loaders():
    x, y = _tensors()
    train = DataLoader(TensorDataset(x[:1400], y[:1400]), batch_size=64, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    return train, DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=64)


def train_only():
    return loaders()[0]


def dict_loaders():
    x, y = _tensors()
    rows = [{"input": x[i], "labels": y[i]} for i in range(1400, len(x))]
    return DataLoader(rows[:200], batch_size=50), DataLoader(rows[200:], batch_size=50)
'''


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory) -> Path:
    """A folder holding the user's package and weights trained for a few epochs (about 97%)."""
    folder = tmp_path_factory.mktemp("user")
    (folder / "userpkg.py").write_text(USER_PACKAGE)
    import importlib.util

    spec = importlib.util.spec_from_file_location("userpkg", folder / "userpkg.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    net, (train, _) = module.make_net(), module.loaders()
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(6):
        for x, y in train:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    torch.save(net.state_dict(), folder / "weights.pt")
    return folder


@pytest.fixture
def in_user_dir(user_dir: Path, monkeypatch, tmp_path: Path) -> Path:
    monkeypatch.syspath_prepend(str(user_dir))
    monkeypatch.chdir(tmp_path)
    return user_dir


def _compress(user_dir: Path, *extra: str) -> int:
    return main(["compress", str(user_dir / "weights.pt"), "--arch", "userpkg:make_net", "--input-shape", "1,1,8,8",
                 *extra])


def test_artifacts_are_read_back_and_the_gate_judges_the_published_pt2(in_user_dir: Path, capsys) -> None:
    code = _compress(in_user_dir, "--data", "userpkg:loaders", "--ratio", "0.3", "--max-accuracy-drop", "60",
                     "--out", "out")
    assert code == 0, capsys.readouterr().err
    report = json.loads(Path("out/report.json").read_text())
    artifacts = report["artifacts"]
    assert set(artifacts) == {"plan.json", "state_dict.pt", "model.pt2", "model.onnx"}
    assert all(row["ok"] for row in artifacts.values())
    assert artifacts["state_dict.pt"]["checked_at"] == ["batch 2", "batch 3"]  # rebuilt from --arch and run
    assert artifacts["model.pt2"]["checked_at"] == ["batch 2", "batch 3"]
    accuracy = report["accuracy"]
    assert accuracy["published"] == pytest.approx(accuracy["after"], abs=0.01)
    assert accuracy["before"] > 90.0 and report["pt2_dynamic_batch"] is True


def test_the_gate_fails_a_model_pruned_too_far(in_user_dir: Path, capsys) -> None:
    code = _compress(in_user_dir, "--data", "userpkg:loaders", "--ratio", "0.9", "--max-accuracy-drop", "0.5",
                     "--no-onnx", "--out", "out")
    err = capsys.readouterr().err.strip()
    assert code == 1 and "quality gate FAILED" in err and len(err.splitlines()) == 1
    assert not Path("out").exists()


def test_the_gate_accepts_dict_batches_with_a_labels_key(in_user_dir: Path, capsys) -> None:
    code = _compress(in_user_dir, "--data", "userpkg:dict_loaders", "--ratio", "0.3", "--max-accuracy-drop", "100",
                     "--no-onnx", "--out", "out")
    assert code == 0, capsys.readouterr().err
    assert "published" in json.loads(Path("out/report.json").read_text())["accuracy"]


def test_a_gate_that_cannot_run_is_a_usage_error(in_user_dir: Path, capsys) -> None:
    code = _compress(in_user_dir, "--data", "userpkg:train_only", "--max-accuracy-drop", "0.5", "--out", "out")
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "--max-accuracy-drop cannot be checked on --data userpkg:train_only: the data has no validation split" in err
    assert not Path("out").exists()


def test_a_published_file_that_does_not_match_fails_the_job(in_user_dir: Path, capsys, monkeypatch) -> None:
    real_save = pipeline.save_pt2

    def save_a_different_model(model, example_inputs, path):
        other = copy.deepcopy(model)
        with torch.no_grad():
            for parameter in other.parameters():
                parameter.add_(0.1)
        return real_save(other, example_inputs, path)

    monkeypatch.setattr(pipeline, "save_pt2", save_a_different_model)
    code = _compress(in_user_dir, "--data", "userpkg:loaders", "--ratio", "0.3", "--no-onnx", "--out", "out")
    err = capsys.readouterr().err.strip()
    assert code == 1 and "model.pt2: outputs differ" in err and "nothing was published" in err
    assert not Path("out").exists()


@pytest.mark.parametrize("flags, message", [
    (["--resume"], "--resume needs --checkpoint-dir"),
    (["--out", " "], "--out is empty"),
    (["--data", "digits", "--recover", "scratch-b", "--finetune-epochs", "1", "--iterative", "2"],
     "--iterative recovers the kept weights after every cycle and --recover scratch-b re-initialises them"),
    (["--data", "digits", "--finetune-epochs", "1", "--iterative", "2", "--group-ratio", "0=0.5"],
     "--iterative prunes one ratio per cycle, spread over the cycles; drop --group-ratio"),
    (["--group-ratio", "0=0.5", "--target-macs", "0.5"], "group_ratios set ratios per glob: they take a plain ratio"),
    (["--calib-samples", "100"], "--calib-samples sets how many calibration samples a data-driven criterion reads; "
                                 "--criterion l2 reads none: use --criterion obs, or drop --calib-samples"),
])
def test_options_that_would_be_silently_ignored_are_refused(flags, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["compress", "zoo:mlp", *flags]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_errors_cross_processes_without_a_doubled_stage_prefix() -> None:
    import pickle

    from structprune.errors import UsageError

    assert str(pickle.loads(pickle.dumps(UsageError("bad input")))) == "[input] bad input"


def test_sigterm_unwinds_like_ctrl_c(tmp_path: Path) -> None:
    proc, job = interrupt_held_compress(tmp_path, ["--no-onnx"], signal.SIGTERM)  # inside the staged job
    assert proc.returncode == 130 and "interrupted; no outputs were written" in proc.stderr, proc.stderr
    assert list(job.iterdir()) == []
