"""Where onnxruntime spends the time of one model: its profiler (`SessionOptions.enable_profiling`) per
kernel, aggregated by op type and by the source module each kernel came from.

onnxruntime profiles the graph it optimised (BatchNorm folded into Conv, activations fused, NCHWc
layout), so kernels are named after that graph's nodes. Each is traced back to the exported file: by
its node name, by the value it writes, or by the value its NCHWc rewrite (`<value>_nchwc`) stands for;
that node's module FQN is read from the dynamo exporter's `pkg.torch.onnx.name_scopes` metadata, or from
the TorchScript exporter's `/a/a.b/Op` node path. Kernels with no source (layout reorders the optimiser
inserted) get layer "". Op types are onnxruntime's kernels; a Conv whose groups equal its input channels
is counted as "Conv (depthwise)". Times are medians over the timed runs (warm-up runs are dropped), in ms;
`run_ms` is the median wall time of a whole run, which also holds the gaps between kernels.
"""
from __future__ import annotations

import ast
import json
import os
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from structprune.data.running import normalize_inputs
from structprune.onnx.export import export_onnx
from structprune.onnx.inputs import ort_feed
from structprune.onnx.latency import session_options

SCOPES_KEY = "pkg.torch.onnx.name_scopes"
WEIGHTED = frozenset({"Conv", "FusedConv", "ConvTranspose", "Gemm", "MatMul", "FusedMatMul", "FusedGemm"})
FUSED_DEPTH = 4  # ops onnxruntime folds into a weighted kernel after it (activation, residual add, ...)


@dataclass(frozen=True)
class KernelTime:
    """One kernel of onnxruntime's optimised graph: its `node` name, `op_type`, source module `layer`
    ("" when unknown) and median time per run `ms`."""

    node: str
    op_type: str
    layer: str
    ms: float


@dataclass(frozen=True)
class OrtProfile:
    """The kernels of one model (`kernels`, slowest first) and the median wall time of a run (`run_ms`)."""

    kernels: tuple[KernelTime, ...]
    run_ms: float
    runs: int

    @property
    def kernel_ms(self) -> float:
        """Summed kernel time per run (at most `run_ms`: the rest is the runtime between kernels)."""
        return sum(k.ms for k in self.kernels)

    def by_op_type(self) -> dict[str, float]:
        """ms per op type, slowest first."""
        return _totals((k.op_type, k.ms) for k in self.kernels)

    def by_layer(self) -> dict[str, float]:
        """ms per source module FQN ("" for kernels without one), slowest first."""
        return _totals((k.layer, k.ms) for k in self.kernels)

    def shares(self) -> dict[str, float]:
        """Each op type's share of the summed kernel time, slowest first."""
        total = max(self.kernel_ms, 1e-12)
        return {op: ms / total for op, ms in self.by_op_type().items()}


def profile_onnx(onnx_path: str | os.PathLike, example_inputs: Any, *, runs: int = 20, warmup: int = 5,
                 threads: int | None = None) -> OrtProfile:
    """Profile `onnx_path` on `example_inputs` with the latency measurement's session options.

    >>> import torch, tempfile, os
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
    >>> path = export_onnx(net, torch.randn(2, 4), os.path.join(tempfile.mkdtemp(), "m.onnx")).path
    >>> profile = profile_onnx(path, torch.randn(2, 4), runs=3, warmup=1)
    >>> profile.runs, list(profile.by_layer())  # Gemm and ReLU run as one kernel, the Linear's
    (3, ['0'])
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"profile_onnx needs runs >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(threads)
        options.enable_profiling, options.profile_file_prefix = True, os.path.join(tmp, "profile")
        options.optimized_model_filepath = os.path.join(tmp, "optimised.onnx")
        session = ort.InferenceSession(os.fspath(onnx_path), options, providers=["CPUExecutionProvider"])
        feed = ort_feed(session, *normalize_inputs(example_inputs))
        for _ in range(warmup + runs):
            session.run(None, feed)
        with open(session.end_profiling()) as f:
            events = json.load(f)
        optimised = onnx.load(options.optimized_model_filepath, load_external_data=False)
    return _aggregate(events, warmup, _sources(onnx.load(os.fspath(onnx_path), load_external_data=False), optimised))


def profile_model(model, example_inputs: Any, **options: Any) -> OrtProfile:
    """`profile_onnx` of `model` exported to a temporary file (options: runs, warmup, threads)."""
    with tempfile.TemporaryDirectory() as tmp:
        exported = export_onnx(model, example_inputs, os.path.join(tmp, "profiled.onnx"))
        return profile_onnx(exported.path, example_inputs, **options)


def _aggregate(events: list[dict], warmup: int, sources: Mapping[str, str]) -> OrtProfile:
    """Median time per kernel over the runs after `warmup` (the node events inside each run's window;
    medians, as the latency figure, so that a run the scheduler interrupted does not count)."""
    runs = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])[warmup:]
    if not runs:
        raise ValueError("onnxruntime's profile holds no timed run (model_run events)")
    starts = np.array([r["ts"] for r in runs])
    per_run: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and event["ts"] >= starts[0]:
            node = event["name"].removesuffix("_kernel_time")
            run = np.searchsorted(starts, event["ts"], side="right") - 1
            per_run.setdefault(node, np.zeros(len(runs)))[run] += event["dur"] / 1e3
            kinds[node] = _op_kind(event.get("args", {}))
    kernels = sorted((KernelTime(node, kinds[node], sources.get(node, ""), float(np.median(ms)))
                      for node, ms in per_run.items()), key=lambda k: -k.ms)
    return OrtProfile(tuple(kernels), float(np.median([r["dur"] for r in runs])) / 1e3, len(runs))


def _sources(exported: onnx.ModelProto, optimised: onnx.ModelProto) -> dict[str, str]:
    """Optimised node name -> source module FQN (module docstring)."""
    by_name = {n.name: n for n in exported.graph.node}
    by_output = {out: n for n in exported.graph.node for out in n.output}
    weights = {i.name for i in exported.graph.initializer}
    layers = {}
    for node in optimised.graph.node:
        source = (by_name.get(node.name) or by_output.get(node.name.removesuffix("_nchwc"))
                  or next((by_output[o] for o in node.output if o in by_output), None))
        if source is not None and node.op_type in WEIGHTED:
            source = _weighted_producer(source, by_output, weights)
        layers[node.name] = _layer(source, weights) if source is not None else ""
    return layers


def _weighted_producer(node: onnx.NodeProto, by_output: Mapping[str, onnx.NodeProto], weights) -> onnx.NodeProto:
    """The node that reads a weight, up the first-input chain of ops fused into it (Conv + Clip: the Conv)."""
    for _ in range(FUSED_DEPTH):
        if _weight_of(node, weights) or not node.input or node.input[0] not in by_output:
            return node
        node = by_output[node.input[0]]
    return node


def _op_kind(args: Mapping[str, Any]) -> str:
    """The kernel's op, "Conv (depthwise)" for a Conv whose weight has one input channel per group."""
    op, shapes = args.get("op_name", "?"), [next(iter(s.values()), []) for s in args.get("input_type_shape", [])]
    if op in ("Conv", "FusedConv") and len(shapes) > 1 and len(shapes[1]) > 2 and len(shapes[0]) > 1:
        if shapes[1][1] == 1 and shapes[0][1] > 1:
            return "Conv (depthwise)"
    return op


def _layer(node: onnx.NodeProto, weights) -> str:
    """The module FQN that produced `node`: the owner of a weight it reads (the exporter keeps parameter
    names), else the innermost named scope ("" at the top level)."""
    weight = _weight_of(node, weights)
    if weight:
        return weight.rsplit(".", 1)[0]
    scopes = next((p.value for p in node.metadata_props if p.key == SCOPES_KEY), None)
    if scopes is not None:
        names = [s for s in ast.literal_eval(scopes)[:-1] if s]
        return names[-1] if names else ""
    path = [part for part in node.name.split("/")[:-1] if part]  # TorchScript: /layer1/layer1.0/conv1/Conv
    return path[-1] if path else ""


def _weight_of(node: onnx.NodeProto, weights) -> str:
    """The first module parameter `node` reads ("module.weight"; constants have no dotted name), or ""."""
    return next((i for i in node.input if i in weights and "." in i), "")


def _totals(pairs) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for key, ms in pairs:
        out[key] += ms
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
