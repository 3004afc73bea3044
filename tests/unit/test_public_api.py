"""The public surface of `structprune`: exactly the names in `__all__`, each importable and documented,
none shadowed by (or shadowing) a subpackage; options checked once, by CompressConfig."""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
import re
import subprocess
import sys
from collections.abc import Mapping

import pytest
import torch
from torch import nn

import structprune
from structprune import CompressConfig, PlanError, UsageError

PUBLIC = {
    "analyze", "select", "compress", "apply_plan", "recalibrate", "export",
    "CompressConfig", "CompressResult", "ChannelGraph", "ChannelGroup", "Plan",
    "DEFAULT_RULES", "DEFAULT_MODULE_RULES", "DEFAULT_SHRINK_RULES",
    "StructpruneError", "CaptureError", "AnalysisError", "PlanError", "RewriteError", "VerificationError",
    "ExportError", "UsageError", "QualityError",
    "__version__",
}
TABLES = ("DEFAULT_RULES", "DEFAULT_MODULE_RULES", "DEFAULT_SHRINK_RULES")


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()


def test_all_is_exactly_the_public_surface() -> None:
    assert len(structprune.__all__) == len(set(structprune.__all__))
    assert set(structprune.__all__) == PUBLIC
    star: dict = {}
    exec("from structprune import *", star)
    assert set(star) - {"__builtins__"} == PUBLIC


@pytest.mark.parametrize("name", sorted(PUBLIC - {"__version__"}))
def test_each_public_name_is_importable_and_documented(name: str) -> None:
    value = getattr(importlib.import_module("structprune"), name)
    if name in TABLES:
        assert isinstance(value, Mapping) and name in structprune.__doc__  # the package docstring explains them
        return
    doc = vars(value).get("__doc__") if inspect.isclass(value) else value.__doc__
    assert doc and doc.strip(), f"structprune.{name} has no docstring"
    assert not doc.startswith(f"{name}("), f"structprune.{name} has only the dataclass's generated docstring"


def test_version_is_a_version_string() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", structprune.__version__)


def test_api_module_lists_a_subset_of_the_package_surface() -> None:
    assert set(structprune.api.__all__) <= PUBLIC


def test_no_public_name_is_also_a_submodule() -> None:
    clashes = [name for name in PUBLIC if importlib.util.find_spec(f"structprune.{name}") is not None]
    assert clashes == []


def test_importing_every_submodule_leaves_the_public_names_alone() -> None:
    before = {name: getattr(structprune, name) for name in PUBLIC}
    for module in pkgutil.walk_packages(structprune.__path__, "structprune."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    assert {name: getattr(structprune, name) for name in PUBLIC} == before


def test_the_selection_stage_imports_without_shadowing_the_select_function() -> None:
    code = ("import structprune.selection.plan, structprune; "
            "assert structprune.selection.plan.Plan is structprune.Plan; assert callable(structprune.select)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr


def test_compress_with_plan_is_deprecated_and_gives_what_compress_with_a_plan_gives() -> None:
    net, x = mlp(), torch.randn(2, 4)
    plan = structprune.Plan({"0.weight:0": (0, 2, 5)}, {"0.weight:0": 8})
    assert "compress_with_plan" not in structprune.__all__
    with pytest.warns(DeprecationWarning, match=r"compress\(model, example_inputs, plan=plan\)"):
        old = structprune.compress_with_plan(net, x, plan)
    new = structprune.compress(net, x, plan=plan)
    assert old.plan == new.plan and new.model[0].out_features == 3
    assert torch.equal(old.model(x), new.model(x))
    assert structprune.apply_plan(net, x, plan)[0].out_features == 3


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"ratio": 1.0}, PlanError, "ratio must be a number in"),
    ({"round_to": 0}, PlanError, "round_to must be a positive integer"),
    ({"max_group_ratio": 0.0}, PlanError, "max_group_ratio must be in"),
    ({"criterion": "l3"}, ValueError, "unknown criterion 'l3'"),
    ({"attention": "rows"}, UsageError, "unknown attention mode 'rows'"),
])
def test_options_are_checked_when_the_config_is_built(options: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        CompressConfig(**options)
    with pytest.raises(error, match=message):  # keyword options build a config: same check, before any capture
        structprune.compress(nn.Identity(), object(), **options)
    with pytest.raises(error, match=message):
        CompressConfig().with_options(**options)


def test_keyword_options_lay_over_a_config() -> None:
    net, x = mlp(), torch.randn(2, 4)
    base = CompressConfig(ratio=0.25, ignore="2")
    assert base.ignore == ("2",)
    result = structprune.compress(net, x, config=base, ratio=0.5)
    assert result.plan.meta["ratio"] == 0.5 and result.plan.meta["ignore"] == ["2"]
    assert result.plan == structprune.compress(net, x, ratio=0.5, ignore=["2"]).plan
    with pytest.raises(TypeError, match="ratoi"):
        structprune.compress(net, x, ratoi=0.5)
