"""Budget targets through `compress` and the CLI (issue 14): the verified model keeps the requested share
of MACs or parameters within 2%, counted on the model compress returns; report.json carries a `target`
section; groups verification keeps whole are planned around; a target out of reach is an error."""
from __future__ import annotations

import json

import pytest
import torch

import models_zoo
import structprune
from helpers import LiteralFlattenLeNet
from structprune.cli import main
from structprune.errors import PlanError
from structprune.graph.cost import count_macs, count_params


@pytest.mark.parametrize("name, kind, fraction", [("resnet20", "macs", 0.5), ("mobilenet_v2", "params", 0.3),
                                                  ("vit", "macs", 0.5)])
def test_compress_meets_the_target_on_the_verified_model(name: str, kind: str, fraction: float) -> None:
    model, x = models_zoo.create(name).eval(), models_zoo.example_inputs(name)
    result = structprune.compress(model, x, **{f"target_{kind}": fraction})
    got = (count_macs(result.model, x) / count_macs(model, x) if kind == "macs"
           else count_params(result.model) / count_params(model))
    assert abs(got - fraction) <= 0.02 * fraction and result.report.verification["ok"]
    assert result.report.to_json()["target"] == {"kind": kind, "requested": fraction, "achieved": round(got, 4),
                                                 "tolerance": 0.02, "within_tolerance": True,
                                                 "allocation": "global", "rounds": 1}
    assert result.plan.meta["target"]["fraction"] == fraction


def test_select_plans_to_a_target() -> None:
    model, x = models_zoo.create("resnet20").eval(), models_zoo.example_inputs("resnet20")
    graph = structprune.analyze(model, x)
    plan = structprune.select(model, x, graph, target_params=0.3)
    assert abs(plan.meta["target"]["estimated"] - 0.3) <= 0.006
    assert plan == structprune.select(model, x, graph, target_params=0.3)  # same seed, same plan


def test_compress_plans_again_around_groups_verification_keeps_whole() -> None:
    model, x = LiteralFlattenLeNet().eval(), torch.randn(2, 1, 32, 32)
    result = structprune.compress(model, x, target_macs=0.5)
    rows = {row.id: row for row in result.report.groups}
    assert rows["conv2.weight:0"].kept == 16 and rows["conv2.weight:0"].why.startswith("verification_failed")
    assert result.report.extra["target"]["rounds"] == 2
    assert abs(count_macs(result.model, x) / count_macs(model, x) - 0.5) <= 0.01


def test_compress_refuses_a_target_out_of_reach_naming_the_best_figure() -> None:
    with pytest.raises(PlanError, match=r"target_params=0.05 cannot be met: .* the best achievable is 0\.\d{4}"):
        structprune.compress(LiteralFlattenLeNet().eval(), torch.randn(2, 1, 32, 32), target_params=0.05)


def test_same_seed_same_plan() -> None:
    x = models_zoo.example_inputs("mlp")
    plans = []
    for _ in range(2):
        torch.manual_seed(0)
        plans.append(structprune.compress(models_zoo.create("mlp").eval(), x, target_macs=0.5,
                                          recapture=False).plan.to_json())
    assert plans[0] == plans[1]


def test_cli_target_writes_the_target_section(tmp_path, capsys) -> None:
    out = tmp_path / "mlp"
    assert main(["compress", "zoo:mlp", "--target-params", "0.3", "--no-onnx", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["target"]["kind"] == "params" and report["target"]["within_tolerance"] is True
    assert abs(report["params"]["after"] / report["params"]["before"] - 0.3) <= 0.006
    assert report["plan"]["target"]["fraction"] == 0.3 and report["plan"]["ratio"] > 0
