"""onnxruntime profiles (issue 14 item 5): time per kernel, aggregated by op type and by the source module the
exporter recorded. The aggregation is tested on synthetic profiler events (exact numbers); one test profiles
a real export for the names and the totals (timing-independent assertions)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from structprune.onnx.profile import _aggregate, profile_model


def run(ts: int, dur: int) -> dict:
    return {"cat": "Session", "name": "model_run", "ts": ts, "dur": dur}


def kernel(node: str, ts: int, dur: int, op: str = "Conv", shapes=None) -> dict:
    args = {"op_name": op, "input_type_shape": shapes or []}
    return {"cat": "Node", "name": f"{node}_kernel_time", "ts": ts, "dur": dur, "args": args}


def test_warm_up_runs_are_dropped_and_each_kernel_takes_its_median_over_runs() -> None:
    depthwise = [{"float": [1, 16, 8, 8]}, {"float": [16, 1, 3, 3]}]
    events = [run(0, 900), kernel("a", 10, 800),  # warm-up: dropped
              run(1000, 100), kernel("a", 1010, 40), kernel("b", 1050, 30, shapes=depthwise),
              run(2000, 120), kernel("a", 2010, 60), kernel("b", 2070, 30, shapes=depthwise),
              run(3000, 5000), kernel("a", 3010, 4000), kernel("b", 4010, 30, shapes=depthwise)]  # one interrupted run
    profile = _aggregate(events, 1, {"a": "features.0", "b": "features.1"})
    assert profile.runs == 3 and profile.run_ms == pytest.approx(0.12)
    assert profile.by_op_type() == pytest.approx({"Conv": 0.06, "Conv (depthwise)": 0.03})
    assert profile.by_layer() == pytest.approx({"features.0": 0.06, "features.1": 0.03})
    assert profile.shares() == pytest.approx({"Conv": 2 / 3, "Conv (depthwise)": 1 / 3})


def test_a_profile_without_timed_runs_is_an_error() -> None:
    with pytest.raises(ValueError, match="no timed run"):
        _aggregate([run(0, 10)], 1, {})


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.norm = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.dw(self.stem(x)).mean((2, 3))))


def test_a_real_profile_names_op_types_and_source_modules_and_sums_to_its_kernels() -> None:
    profile = profile_model(ConvNet().eval(), torch.randn(1, 3, 16, 16), runs=5, warmup=2)
    ops, layers = profile.by_op_type(), profile.by_layer()
    assert {"Conv", "Conv (depthwise)", "LayerNormalization"} <= set(ops)
    assert {"stem.0", "dw", "norm"} <= set(layers)  # Conv+BN+ReLU fused: the kernel is the conv's
    assert sum(ops.values()) == pytest.approx(profile.kernel_ms) == pytest.approx(sum(layers.values()))
    assert 0 < profile.kernel_ms <= 1.5 * profile.run_ms and profile.runs == 5
    assert sum(profile.shares().values()) == pytest.approx(1.0)
