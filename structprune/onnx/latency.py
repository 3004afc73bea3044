"""onnxruntime latency with fixed session options, so numbers from one machine are comparable.

Sessions use `threads` intra-op threads (1 by default: the most stable number), one inter-op thread,
sequential execution and ORT_ENABLE_ALL graph optimisation. `compare_latency` times two models in
the same process, alternating which runs first each round so drift hits both alike.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from structprune.data.running import normalize_inputs
from structprune.onnx.inputs import ort_feed


@dataclass(frozen=True)
class Latency:
    """Wall-clock time of one onnxruntime call on the example inputs, in milliseconds."""

    median_ms: float
    p90_ms: float
    runs: int
    threads: int = 1


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """The fixed options every latency measurement uses."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return options


def ort_latency(onnx_path: str | os.PathLike, example_inputs: Any, *, runs: int = 20, warmup: int = 5,
                threads: int | None = None) -> Latency:
    """Median and 90th-percentile latency of `onnx_path` on `example_inputs` (CPU).

    >>> import torch, tempfile, os
    >>> from structprune.onnx import export_onnx
    >>> net = torch.nn.Linear(4, 2)
    >>> path = export_onnx(net, torch.randn(2, 4), os.path.join(tempfile.mkdtemp(), "m.onnx")).path
    >>> ort_latency(path, torch.randn(2, 4), runs=5, warmup=1).runs
    5
    """
    timer = _Timer(onnx_path, example_inputs, threads)
    timer.warm_up(warmup)
    return _summarise([timer.time_once() for _ in range(_check_runs(runs))], threads)


def compare_latency(dense_path: str | os.PathLike, pruned_path: str | os.PathLike, example_inputs: Any, *,
                    runs: int = 20, warmup: int = 5,
                    threads: int | None = None) -> tuple[Latency, Latency, float]:
    """Time the dense and the pruned model alternately; returns (dense, pruned, speedup), where
    speedup = dense median / pruned median (> 1 means the pruned model is faster)."""
    timers = (_Timer(dense_path, example_inputs, threads), _Timer(pruned_path, example_inputs, threads))
    for timer in timers:
        timer.warm_up(warmup)
    samples: tuple[list[float], list[float]] = ([], [])
    for i in range(_check_runs(runs)):
        for k in ((0, 1) if i % 2 == 0 else (1, 0)):
            samples[k].append(timers[k].time_once())
    dense, pruned = _summarise(samples[0], threads), _summarise(samples[1], threads)
    return dense, pruned, dense.median_ms / max(pruned.median_ms, 1e-9)


class _Timer:
    """One session and its feed, ready to be timed."""

    def __init__(self, onnx_path: str | os.PathLike, example_inputs: Any, threads: int | None) -> None:
        self.session = ort.InferenceSession(os.fspath(onnx_path), session_options(threads),
                                            providers=["CPUExecutionProvider"])
        self.feed = ort_feed(self.session, *normalize_inputs(example_inputs))

    def warm_up(self, calls: int) -> None:
        for _ in range(calls):
            self.session.run(None, self.feed)

    def time_once(self) -> float:
        start = time.perf_counter()
        self.session.run(None, self.feed)
        return (time.perf_counter() - start) * 1e3


def _summarise(samples_ms: list[float], threads: int | None) -> Latency:
    values = np.asarray(samples_ms)
    return Latency(float(np.median(values)), float(np.percentile(values, 90)), len(values), threads or 1)


def _check_runs(runs: int) -> int:
    if runs < 1:
        raise ValueError(f"runs must be at least 1, got {runs}")
    return runs
