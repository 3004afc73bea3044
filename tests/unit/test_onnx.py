"""ONNX export stage: every zoo model, pruned at ratio 0.5, exports to a self-contained file whose
onnxruntime outputs match torch; the batch axis is dynamic; dynamo failures fall back to the legacy
exporter; failures of both raise ExportError; latency is measured with fixed session options."""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import models_zoo
import structprune
from structprune.onnx import (
    ExportError,
    Latency,
    OnnxExport,
    check_parity,
    compare_latency,
    export_onnx,
    onnx_section,
    ort_latency,
)

ALL_MODELS = models_zoo.list_models()
IMAGE_MODELS = {n for n in ALL_MODELS if models_zoo.spec(n).input_kind == "image"}


class _Zoo:
    """Pruned zoo models and their exports, built once per module (compress dominates runtime)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.cache: dict[str, tuple] = {}

    def pruned(self, name: str) -> tuple[nn.Module, nn.Module, object, OnnxExport]:
        if name not in self.cache:
            torch.manual_seed(0)
            dense = models_zoo.create(name).eval()
            inputs = models_zoo.example_inputs(name, batch=2)
            pruned = structprune.compress(dense, inputs, ratio=0.5).model
            exported = export_onnx(pruned, inputs, self.folder / f"{name}.onnx")
            self.cache[name] = (dense, pruned, inputs, exported)
        return self.cache[name]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> _Zoo:
    return _Zoo(tmp_path_factory.mktemp("onnx_zoo"))


def _files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _initializer_elements(path: str | Path) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)


def _assert_one_checked_file(exported: OnnxExport, name: str) -> None:
    folder = Path(exported.path).parent
    assert exported.external_data == ()
    assert not [p for p in folder.iterdir() if p.name.startswith(f"{name}.onnx") and p.name != f"{name}.onnx"]
    assert not [p for p in folder.iterdir() if p.name.startswith(".structprune-onnx-")]
    onnx.checker.check_model(exported.path, full_check=True)


def _ort_outputs(path: str | Path, feed: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_pruned_zoo_model_exports_and_matches_onnxruntime(zoo: _Zoo, name: str, record_property) -> None:
    _, pruned, inputs, exported = zoo.pruned(name)
    parity = check_parity(pruned, exported.path, inputs)
    record_property("exporter", exported.exporter)
    record_property("max_abs_error", parity.max_abs_error)
    assert parity.ok, parity
    assert parity.max_abs_error < 1e-4 or parity.max_rel_error < 1e-5, parity
    assert parity.batch_sizes_checked == (2, 3)
    assert exported.exporter in ("dynamo", "legacy")
    assert (exported.fallback_reason == "") == (exported.exporter == "dynamo")
    if name in IMAGE_MODELS:
        assert exported.exporter == "dynamo", exported.fallback_reason
    _assert_one_checked_file(exported, name)


@pytest.mark.parametrize("name", ["cnn", "resnet20", "mobilenet_v2", "vit", "bert"])
def test_pruned_graph_has_fewer_initializer_elements(zoo: _Zoo, name: str, tmp_path: Path) -> None:
    dense, _, inputs, exported = zoo.pruned(name)
    dense_export = export_onnx(dense, inputs, tmp_path / "dense.onnx")
    dense_elements = _initializer_elements(dense_export.path)
    pruned_elements = _initializer_elements(exported.path)
    assert pruned_elements < 0.6 * dense_elements, (dense_elements, pruned_elements)


def test_batch_axis_is_dynamic(zoo: _Zoo) -> None:
    _, pruned, inputs, exported = zoo.pruned("resnet20")
    graph_input = onnx.load(exported.path).graph.input[0]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param != ""
    for batch in (1, 5, 7):
        x = torch.randn(batch, *inputs.shape[1:])
        (got,) = _ort_outputs(exported.path, {exported.input_names[0]: x.numpy()})
        with torch.no_grad():
            want = pruned(x).numpy()
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


def test_dict_inputs_keep_their_names(zoo: _Zoo) -> None:
    _, pruned, inputs, exported = zoo.pruned("bert")
    session = ort.InferenceSession(exported.path, providers=["CPUExecutionProvider"])
    assert exported.input_names == ("input_ids", "attention_mask")
    assert {i.name: i.type for i in session.get_inputs()} == {"input_ids": "tensor(int64)",
                                                                 "attention_mask": "tensor(int64)"}
    (got,) = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    with torch.no_grad():
        want = pruned(**inputs).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_falls_back_to_legacy_when_dynamo_fails(zoo: _Zoo, monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    _, pruned, inputs, _ = zoo.pruned("cnn")
    real_export = torch.onnx.export

    def dynamo_breaks(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("simulated dynamo failure\nsecond line")
        return real_export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_breaks)
    exported = export_onnx(pruned, inputs, tmp_path / "cnn.onnx")
    assert exported.exporter == "legacy"
    assert exported.fallback_reason == "export failed: RuntimeError: simulated dynamo failure"
    parity = check_parity(pruned, exported.path, inputs)
    assert parity.ok and parity.max_abs_error < 1e-4, parity
    assert _files_in(tmp_path) == ["cnn.onnx"]


def test_dynamo_file_the_checker_rejects_is_exported_again_without_the_optimizer(
        zoo: _Zoo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, pruned, inputs, _ = zoo.pruned("cnn")
    real_export, calls = torch.onnx.export, []

    def optimizer_breaks_order(model, args, path, *rest, dynamo=True, optimize=True, **kwargs):
        calls.append((dynamo, optimize))
        real_export(model, args, path, *rest, dynamo=dynamo, optimize=optimize, **kwargs)
        if dynamo and optimize:  # as timm's gemma4_vit_167m: nodes out of topological order
            broken = onnx.load(path)
            nodes = list(broken.graph.node)[::-1]
            del broken.graph.node[:]
            broken.graph.node.extend(nodes)
            onnx.save_model(broken, path)

    monkeypatch.setattr(torch.onnx, "export", optimizer_breaks_order)
    exported = export_onnx(pruned, inputs, tmp_path / "cnn.onnx")
    assert calls == [(True, True), (True, False)]
    assert exported.exporter == "dynamo-unoptimized"
    assert exported.fallback_reason.startswith("onnx checker failed: ")
    onnx.checker.check_model(exported.path, full_check=True)
    assert check_parity(pruned, exported.path, inputs).ok
    assert _files_in(tmp_path) == ["cnn.onnx"]


def test_dynamo_that_raises_goes_to_legacy_without_a_second_dynamo_try(
        zoo: _Zoo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _, pruned, inputs, _ = zoo.pruned("cnn")
    real_export, calls = torch.onnx.export, []

    def dynamo_raises(*args, dynamo=True, **kwargs):
        calls.append(dynamo)
        if dynamo:
            raise RuntimeError("simulated capture failure")
        return real_export(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_raises)
    assert export_onnx(pruned, inputs, tmp_path / "cnn.onnx").exporter == "legacy"
    assert calls == [True, False]


class _DataDependentBranch(nn.Module):
    """torch.export cannot guard on a tensor's value; the TorchScript tracer records one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > -1e9 else -self.fc(x)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_model_torch_export_cannot_capture_uses_legacy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = _DataDependentBranch().train(), torch.randn(3, 8)
    exported = export_onnx(model, x, tmp_path / "branch.onnx")
    assert exported.exporter == "legacy"
    assert "torch.export" in exported.fallback_reason
    assert model.training  # the training flag is restored
    assert check_parity(model, exported.path, x).ok


class _FixedBatch(nn.Module):
    """Hard-codes the batch size, so no exporter can make the batch axis dynamic."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(2, -1))


class _Eigenvalues(nn.Module):
    """linalg.eigh has no ONNX lowering in either exporter."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        return torch.linalg.eigh(y[:, :, None] * y[:, None, :])[0]


def test_a_fixed_batch_model_exports_its_batch_statically_and_says_so(tmp_path: Path) -> None:
    exported = export_onnx(_FixedBatch(), torch.randn(2, 8), tmp_path / "fixed.onnx")
    parity = check_parity(_FixedBatch(), exported.path, torch.randn(2, 8), dynamic_batch=exported.dynamic_batch)
    assert exported.dynamic_batch is False and parity.batch_sizes_checked == (2,)
    session = ort.InferenceSession(exported.path, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [2, 8]


def test_both_exporters_failing_raises_export_error(tmp_path: Path) -> None:
    target = tmp_path / "eig.onnx"
    target.write_bytes(b"previous export")
    with pytest.raises(ExportError) as info:
        export_onnx(_Eigenvalues(), torch.randn(2, 8), target)
    message = str(info.value)
    assert info.value.stage == "export" and isinstance(info.value, structprune.StructpruneError)
    assert message.startswith("[export] could not export _Eigenvalues to ONNX")
    assert "dynamo exporter: export failed" in message
    assert "legacy TorchScript exporter: " in message
    assert target.read_bytes() == b"previous export"
    assert _files_in(tmp_path) == ["eig.onnx"]


def test_batch_of_one_exports_a_dynamic_batch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = models_zoo.create("mlp").eval()
    x = models_zoo.example_inputs("mlp", batch=1)
    exported = export_onnx(model, x, tmp_path / "mlp.onnx")
    parity = check_parity(model, exported.path, x)
    assert exported.exporter == "dynamo"
    assert parity.ok and parity.batch_sizes_checked == (1, 2)


def test_a_static_batch_graph_module_exports_with_its_own_batch(tmp_path: Path) -> None:
    """A .pt2 archive exported at batch 1 only runs at batch 1: its ONNX file keeps that batch."""
    torch.manual_seed(0)
    model = models_zoo.create("mlp").eval()
    x = models_zoo.example_inputs("mlp", batch=1)
    static = torch.export.export(model, (x,)).module()
    with pytest.raises(Exception, match="Guard failed"):
        static(torch.cat([x, x]))
    section = structprune.export(static, x, tmp_path / "static.onnx", dense=static, latency_runs=2)
    assert section["dynamic_batch"] is False
    assert section["parity"]["ok"] and section["parity"]["batch_sizes_checked"] == [1]
    session = ort.InferenceSession(str(tmp_path / "static.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == 1
    assert section["latency"]["speedup"] > 0


def test_parity_catches_a_different_model(zoo: _Zoo) -> None:
    _, pruned, inputs, exported = zoo.pruned("mlp")
    altered = copy.deepcopy(pruned)
    with torch.no_grad():
        next(altered.parameters()).add_(0.5)
    parity = check_parity(altered, exported.path, inputs)
    assert not parity.ok
    assert parity.max_abs_error > 1e-2


def test_latency_uses_fixed_options_and_reports_speedup(zoo: _Zoo, tmp_path: Path) -> None:
    dense, _, inputs, exported = zoo.pruned("resnet20")
    dense_export = export_onnx(dense, inputs, tmp_path / "dense.onnx")
    single = ort_latency(exported.path, inputs, runs=5, warmup=1)
    assert isinstance(single, Latency) and single.runs == 5 and single.threads == 1
    assert 0 < single.median_ms <= single.p90_ms
    dense_latency, pruned_latency, speedup = compare_latency(dense_export.path, exported.path, inputs, runs=10)
    assert dense_latency.runs == pruned_latency.runs == 10
    assert speedup == pytest.approx(dense_latency.median_ms / pruned_latency.median_ms)
    assert speedup > 0  # speed itself is measured in benchmarks, not asserted under a shared CPU
    section = onnx_section(exported, check_parity(zoo.pruned("resnet20")[1], exported.path, inputs),
                           (dense_latency, pruned_latency, speedup))
    assert json.loads(json.dumps(section)) == section
    assert set(section["latency"]) == {"dense_ms", "pruned_ms", "dense_p90_ms", "pruned_p90_ms", "runs",
                                       "threads", "speedup"}
    assert section["parity"]["ok"] and section["exporter"] == "dynamo"


def test_latency_rejects_zero_runs(zoo: _Zoo) -> None:
    exported = zoo.pruned("mlp")[3]
    with pytest.raises(ValueError, match="runs must be at least 1"):
        ort_latency(exported.path, zoo.pruned("mlp")[2], runs=0)


def test_export_creates_missing_folders(zoo: _Zoo, tmp_path: Path) -> None:
    _, pruned, inputs, _ = zoo.pruned("mlp")
    exported = export_onnx(pruned, inputs, tmp_path / "a" / "b" / "mlp.onnx")
    assert os.path.isfile(exported.path) and exported.path == str(tmp_path / "a" / "b" / "mlp.onnx")


def test_model_that_does_not_run_raises_export_error(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"Linear does not run on the example inputs \(RuntimeError: .*mat1"):
        export_onnx(nn.Linear(4, 2), torch.randn(2, 5), tmp_path / "bad.onnx")
    assert _files_in(tmp_path) == []


def test_external_weights_are_folded_into_one_file(zoo: _Zoo, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    _, pruned, inputs, _ = zoo.pruned("mlp")
    real_export = torch.onnx.export
    force_external = lambda *a, **kw: real_export(*a, **(kw | {"external_data": True}))  # noqa: E731
    monkeypatch.setattr(torch.onnx, "export", force_external)
    exported = export_onnx(pruned, inputs, tmp_path / "mlp.onnx")
    assert exported.external_data == () and _files_in(tmp_path) == ["mlp.onnx"]
    assert check_parity(pruned, exported.path, inputs).ok


def test_models_over_the_protobuf_limit_keep_their_weights_beside(zoo: _Zoo, monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    _, pruned, inputs, _ = zoo.pruned("mlp")
    monkeypatch.setattr("structprune.onnx.export.MAX_INLINE_BYTES", 0)  # every model counts as "over 2 GB"
    exported = export_onnx(pruned, inputs, tmp_path / "mlp.onnx")
    assert exported.external_data == ("mlp.onnx.data",)
    assert _files_in(tmp_path) == ["mlp.onnx", "mlp.onnx.data"]
    assert check_parity(pruned, exported.path, inputs).ok
