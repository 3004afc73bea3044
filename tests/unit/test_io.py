"""structprune.io: accepted model formats load, refusals are one-line UsageErrors, outputs are atomic."""
from __future__ import annotations

import json
import os
import pickle
import random
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

import models_zoo
from structprune.capture.deploy import save_pt2
from structprune.errors import UsageError
from structprune.io import (
    MODEL_LOADERS,
    LoadedModel,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    load_model,
    staged_output_dir,
)

FACTORY_MODULE = '''
import torch

def make_net(hidden=8):
    return torch.nn.Sequential(torch.nn.Linear(5, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 3))
'''


@pytest.fixture(scope="module")
def cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return models_zoo.create("cnn").eval()


@pytest.fixture(scope="module")
def cnn_input() -> torch.Tensor:
    return models_zoo.example_inputs("cnn", batch=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, cnn: torch.nn.Module, cnn_input: torch.Tensor) -> dict:
    """One file of every kind, written once for the module."""
    folder = tmp_path_factory.mktemp("models")
    paths = {kind: folder / name for kind, name in
             [("state_dict", "cnn_weights.pt"), ("pickle", "whole.pt"), ("pt2", "cnn.pt2"),
              ("torchscript", "scripted.pt")]}
    torch.save(cnn.state_dict(), paths["state_dict"])
    torch.save(cnn, paths["pickle"])
    torch.export.save(torch.export.export(cnn, (cnn_input,), strict=False), paths["pt2"])
    with warnings.catch_warnings():  # TorchScript is deprecated; this file exists to be refused
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.trace(cnn, cnn_input), paths["torchscript"])
    return paths


def _usage_error(match: str, **kwargs: object) -> str:
    """Run load_model(**kwargs), assert it raises a one-line UsageError matching `match`."""
    with pytest.raises(UsageError, match=match) as caught:
        load_model(**kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def _outputs(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(inputs)


# --- accepted formats -------------------------------------------------------------------------

def test_zoo_spec_gives_eval_model_and_batch1_inputs() -> None:
    loaded = load_model("zoo:cnn")
    assert (loaded.source, loaded.name, loaded.arch) == ("zoo", "cnn", "zoo:cnn")
    assert not loaded.model.training
    assert loaded.example_inputs.shape == (1, 3, 32, 32)
    assert _outputs(loaded.model, loaded.example_inputs).shape == (1, 10)


def test_zoo_spec_passes_arch_kwargs_to_model_and_inputs() -> None:
    loaded = load_model("zoo:cnn", arch_kwargs={"in_chans": 1, "image_size": 8, "num_classes": 4})
    assert loaded.example_inputs.shape == (1, 1, 8, 8)
    assert _outputs(loaded.model, loaded.example_inputs).shape == (1, 4)
    assert loaded.arch_kwargs == {"in_chans": 1, "image_size": 8, "num_classes": 4}


def test_pt2_loads_runs_and_matches_original(files: dict, cnn: torch.nn.Module,
                                             cnn_input: torch.Tensor) -> None:
    loaded = load_model(str(files["pt2"]))
    assert (loaded.source, loaded.name, loaded.arch) == ("pt2", "cnn", None)
    assert isinstance(loaded.model, torch.fx.GraphModule)
    torch.testing.assert_close(loaded.example_inputs, cnn_input)
    torch.testing.assert_close(_outputs(loaded.model, cnn_input), _outputs(cnn, cnn_input))


def test_save_pt2_round_trips(tmp_path: Path) -> None:
    model = load_model("zoo:mlp")
    saved = save_pt2(model.model, model.example_inputs, tmp_path / "mlp.pt2")
    assert saved.dynamic_batch and not saved.has_tokens
    reloaded = load_model(str(saved.path))
    torch.testing.assert_close(_outputs(reloaded.model, model.example_inputs),
                               _outputs(model.model, model.example_inputs))
    assert [p.name for p in tmp_path.iterdir()] == ["mlp.pt2"]


@pytest.mark.parametrize("arch", ["zoo:cnn", "models_zoo:cnn"])
def test_state_dict_with_zoo_arch_matches_original(files: dict, cnn: torch.nn.Module, cnn_input: torch.Tensor,
                                                   arch: str) -> None:
    loaded = load_model(str(files["state_dict"]), arch=arch)
    assert (loaded.source, loaded.name, loaded.arch) == ("state_dict", "cnn_weights", arch)
    assert loaded.example_inputs.shape == (1, 3, 32, 32)
    torch.testing.assert_close(_outputs(loaded.model, cnn_input), _outputs(cnn, cnn_input))


def test_state_dict_with_factory_arch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tiny_factory.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import tiny_factory

    net = tiny_factory.make_net(hidden=6)
    torch.save(net.state_dict(), tmp_path / "tiny.pth")
    loaded = load_model(str(tmp_path / "tiny.pth"), arch="tiny_factory:make_net",
                        arch_kwargs={"hidden": 6}, input_shape=(5,))
    assert type(loaded.model) is torch.nn.Sequential
    assert loaded.example_inputs.shape == (1, 5)
    torch.testing.assert_close(_outputs(loaded.model, loaded.example_inputs),
                               _outputs(net, loaded.example_inputs))
    message = _usage_error("--input-shape", spec=str(tmp_path / "tiny.pth"), arch="tiny_factory:make_net",
                           arch_kwargs={"hidden": 6})
    assert "tiny.pth" in message


def test_checkpoint_dict_and_data_parallel_prefix_load(tmp_path: Path, cnn: torch.nn.Module,
                                                       cnn_input: torch.Tensor) -> None:
    wrapped = {f"module.{k}": v for k, v in cnn.state_dict().items()}
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "ckpt.pt")
    loaded = load_model(str(tmp_path / "ckpt.pt"), arch="zoo:cnn")
    torch.testing.assert_close(_outputs(loaded.model, cnn_input), _outputs(cnn, cnn_input))


def test_trusted_pickle_loads_whole_module(files: dict, cnn: torch.nn.Module,
                                           cnn_input: torch.Tensor) -> None:
    loaded = load_model(str(files["pickle"]), trust_pickle=True, input_shape=(3, 32, 32))
    assert (loaded.source, loaded.name) == ("pickle", "whole")
    assert type(loaded.model) is type(cnn)
    torch.testing.assert_close(_outputs(loaded.model, cnn_input), _outputs(cnn, cnn_input))


# --- refusals ---------------------------------------------------------------------------------

def test_pickled_module_is_refused_with_safe_alternatives(files: dict) -> None:
    message = _usage_error("unpickling runs code", spec=str(files["pickle"]))
    assert "whole.pt" in message and ".pt2" in message and "--arch" in message
    assert "models_zoo.cnn.LeNet" in message


def test_torchscript_is_refused(files: dict) -> None:
    message = _usage_error("TorchScript", spec=str(files["torchscript"]))
    assert "torch.export" in message and ".pt2" in message


def test_pt2_with_pickled_weight_is_refused(tmp_path: Path, files: dict) -> None:
    tampered = tmp_path / "tampered.pt2"
    with zipfile.ZipFile(files["pt2"]) as source, zipfile.ZipFile(tampered, "w") as target:
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                next(iter(config["config"].values()))["use_pickle"] = True
                data = json.dumps(config).encode()
            target.writestr(entry, data)
    message = _usage_error("pickled Python object", spec=str(tampered))
    assert "--trust-pickle" in message


@pytest.mark.parametrize("name, content, match", [
    ("missing.pt", None, "does not exist"),
    ("empty.pt", b"", "is empty"),
    ("random.bin", random.Random(0).randbytes(4096), "not a PyTorch model file"),
    ("pickle_garbage.pt", b"\x80\x02" + bytes(range(256)) * 4, "corrupt"),
    ("other.zip", None, "zip archive but not a PyTorch file"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_unreadable_files_are_refused(tmp_path: Path, name: str, content: bytes | None, match: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    if name.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes.txt", "hello")
    assert name in _usage_error(match, spec=str(path))


def test_zoo_name_without_prefix_gets_a_hint() -> None:
    _usage_error("did you mean zoo:resnet20", spec="resnet20")


def test_folder_is_refused(tmp_path: Path) -> None:
    assert "folder" in _usage_error("is a folder", spec=str(tmp_path))


def test_truncated_state_dict_is_refused(tmp_path: Path, files: dict) -> None:
    data = files["state_dict"].read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    assert "truncated.pt" in _usage_error("truncated or damaged", spec=str(truncated))


def test_state_dict_without_arch_asks_for_arch(files: dict) -> None:
    assert "cnn_weights.pt" in _usage_error("pass --arch", spec=str(files["state_dict"]))


@pytest.mark.parametrize("arch, match", [
    ("zoo:no_such_model", "unknown zoo model 'no_such_model'; available: .*resnet20"),
    ("no_such_package.models:make", "cannot import module 'no_such_package.models'"),
    ("torch.nn:NoSuchFactory", "has no 'NoSuchFactory'"),
    ("not an arch", "is not understood"),
])
def test_bad_arch_is_refused(files: dict, arch: str, match: str) -> None:
    _usage_error(match, spec=str(files["state_dict"]), arch=arch)


def test_unknown_zoo_spec_lists_available_models() -> None:
    message = _usage_error("unknown zoo model", spec="zoo:nope")
    assert all(name in message for name in models_zoo.list_models())


@pytest.mark.parametrize("arch, arch_kwargs, match", [
    ("zoo:mlp", {}, r"missing key '[\w.]+' \(and \d+ more\)"),
    ("zoo:cnn", {"num_classes": 5}, r"'fc2.weight' has shape \(10, 120\) in the file but \(5, 120\)"),
])
def test_state_dict_that_does_not_fit_is_refused(files: dict, arch: str, arch_kwargs: dict,
                                                 match: str) -> None:
    message = _usage_error(match, spec=str(files["state_dict"]), arch=arch, arch_kwargs=arch_kwargs)
    assert "does not fit architecture" in message


def test_arch_with_self_describing_source_is_refused(files: dict) -> None:
    _usage_error("drop --arch", spec=str(files["pt2"]), arch="zoo:cnn")


def test_bad_zoo_kwargs_are_refused() -> None:
    _usage_error("cannot build zoo model 'cnn'.*fix --arch-kwargs", spec="zoo:cnn", arch_kwargs={"depth": 3})


@pytest.mark.parametrize("kind, kwargs", [
    ("state_dict", {"arch": "zoo:cnn"}),
    ("pt2", {}),
    ("pickle", {}),
    ("pickle", {"trust_pickle": True, "input_shape": (3, 32, 32)}),
    ("torchscript", {}),
])
def test_input_file_is_never_modified(files: dict, kind: str, kwargs: dict) -> None:
    path = files[kind]
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    try:
        load_model(str(path), **kwargs)
    except UsageError:
        pass
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


# --- atomic outputs ---------------------------------------------------------------------------

def test_atomic_writes_produce_complete_files(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a.json", '{"ok": true}')
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "c.pt")
    assert json.loads((tmp_path / "a.json").read_text()) == {"ok": True}
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert torch.equal(torch.load(tmp_path / "c.pt")["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin", "c.pt"]


def test_interrupted_atomic_write_leaves_old_file_and_no_temp(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "plan.json"
    target.write_text("old")

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupt)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(target, b"new")
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "fresh.json", b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]
    assert target.read_text() == "old"


def test_failing_torch_save_leaves_no_partial_file(tmp_path: Path) -> None:
    with pytest.raises((pickle.PicklingError, AttributeError)):  # a local lambda: AttributeError
        atomic_torch_save({"w": torch.ones(3), "bad": lambda: None}, tmp_path / "model.pt")
    assert list(tmp_path.iterdir()) == []


def test_staged_output_dir_appears_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with staged_output_dir(out, force=False) as staging:
        (staging / "report.json").write_text("{}")
        assert not out.exists()
    assert [p.name for p in out.iterdir()] == ["report.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_failure_inside_staged_output_dir_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="boom"):
        with staged_output_dir(out, force=False) as staging:
            (staging / "half.onnx").write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("interruption", [RuntimeError, KeyboardInterrupt])
def test_failure_with_force_keeps_previous_output(tmp_path: Path, interruption: type[BaseException]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"previous")
    with pytest.raises(interruption):
        with staged_output_dir(out, force=True) as staging:
            (staging / "model.onnx").write_bytes(b"half")
            raise interruption()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert [p.name for p in out.iterdir()] == ["model.onnx"]
    assert (out / "model.onnx").read_bytes() == b"previous"


def test_force_replaces_previous_output_completely(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    with staged_output_dir(out, force=True) as staging:
        (staging / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_non_empty_output_dir_without_force_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="--force") as caught:
        with staged_output_dir(out, force=False):
            pass
    assert str(out) in str(caught.value) and "\n" not in str(caught.value)
    assert (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_empty_output_dir_is_reused_without_force(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with staged_output_dir(out, force=False) as staging:
        (staging / "a.txt").write_text("a")
    assert [p.name for p in out.iterdir()] == ["a.txt"]


def test_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        with staged_output_dir(tmp_path / "run", force=True):
            pass


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit.load, in the custom loader only
def test_loader_table_can_be_extended_without_mutation(files: dict) -> None:
    def load_torchscript_anyway(request, found):
        return LoadedModel(torch.jit.load(str(found.path)), torch.zeros(1, 3, 32, 32), "ts", "torchscript")

    loaded = load_model(str(files["torchscript"]),
                        loaders=MODEL_LOADERS | {"torchscript": load_torchscript_anyway})
    assert loaded.source == "torchscript"
    with pytest.raises(TypeError):
        MODEL_LOADERS["torchscript"] = load_torchscript_anyway
