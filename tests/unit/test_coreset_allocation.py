"""allocation="coreset" (structprune.selection.coreset_allocation): the coreset bound's global-eps allocation as a
ranking the target search cuts, so `--criterion coreset` and `--allocation coreset` meet MACs targets within 2%."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import models_zoo
import structprune
from structprune.cli import main
from structprune.criteria.budget import expected_unique, sample_bound
from structprune.data import load_data
from structprune.errors import PlanError
from structprune.pipeline import calibration_loader
from structprune.selection.coreset_allocation import CoresetBound


def bound_counts(bound: CoresetBound, sizes: dict[str, int], eps: float) -> dict[str, int]:
    """criteria.budget.allocate's kept count per group at one eps (its inner `counts`)."""
    out = {}
    for gid, s in bound.sens.items():
        m = sample_bound(eps, float(s.sum()), bound.eta[gid], bound.k_const, bound.delta)
        out[gid] = int(min(sizes[gid], max(1, round(expected_unique(s / s.sum(), m)))))
    return out


def test_cutting_the_ranking_at_any_eps_gives_the_bounds_counts_at_that_eps() -> None:
    rng = np.random.default_rng(0)
    sizes = {"a": 16, "b": 32, "c": 8}
    bound = CoresetBound({g: rng.gamma(0.5, size=n) for g, n in sizes.items()}, {"a": 64, "b": 16, "c": 256})
    groups = [SimpleNamespace(id=g, size=n) for g, n in sizes.items()]
    thresholds = {g.id: bound.thresholds(g.id, g.size) for g in groups}
    for eps in np.geomspace(0.05, 50, 12):
        removed = {g: int((t <= eps).sum()) for g, t in thresholds.items()}
        expected = bound_counts(bound, sizes, float(eps))
        assert all(abs(sizes[g] - removed[g] - expected[g]) <= 1 for g in sizes), (eps, removed, expected)
    ranking = bound.ranking(groups, 1.0)
    assert len(ranking) == sum(n - 1 for n in sizes.values())
    order = sorted(float(t) for ts in thresholds.values() for t in ts)
    assert order == sorted(order) and math.isfinite(order[-1])


def test_groups_without_sensitivities_come_last() -> None:
    bound = CoresetBound({"a": np.ones(4)}, {"a": 4})
    ranking = bound.ranking([SimpleNamespace(id="z", size=4), SimpleNamespace(id="a", size=4)], 0.9)
    assert ranking == ["a", "a", "a", "z", "z", "z"]


@pytest.fixture(scope="module")
def digits_cnn():
    images = load_data("digits", input_shape=(1, 8, 8), seed=0)
    torch.manual_seed(0)
    cnn = models_zoo.create("cnn", in_chans=1, image_size=8, num_classes=10).eval()
    return cnn, torch.randn(1, 1, 8, 8), calibration_loader(images, 256)


@pytest.mark.parametrize("allocation", [None, "coreset"])
def test_criterion_coreset_meets_a_macs_target_within_2_percent(digits_cnn, allocation) -> None:
    """The target search sets the counts (global threshold by default, the coreset bound as an option); the
    criterion then picks channels without moving counts by its own parameter budget (which missed: 0.80)."""
    cnn, x, data = digits_cnn
    result = structprune.compress(cnn, x, target_macs=0.5, criterion="coreset", data=data, allocation=allocation)
    section = result.report.extra["target"]
    assert section["within_tolerance"] and abs(section["achieved"] - 0.5) <= 0.01
    assert section["allocation"] == (allocation or "global") and result.report.verification["ok"]
    assert structprune.compress(cnn, x, target_macs=0.5, criterion="coreset", data=data,
                                allocation=allocation).plan.to_json() == result.plan.to_json()


def test_coreset_allocation_spreads_differently_from_global_and_needs_data(digits_cnn) -> None:
    cnn, x, data = digits_cnn
    plans = {a: structprune.compress(cnn, x, target_params=0.5, data=data, allocation=a).plan
             for a in ("global", "coreset")}
    kept = {a: {g: len(k) for g, k in p.keep.items()} for a, p in plans.items()}
    assert kept["global"] != kept["coreset"] and plans["coreset"].meta["allocation"] == "coreset"
    with pytest.raises(PlanError, match="allocation 'coreset' .* pass data="):
        structprune.compress(cnn, x, target_macs=0.5, allocation="coreset")


def test_cli_allocation_coreset_without_data_is_a_one_line_usage_error(tmp_path, capsys) -> None:
    argv = ["compress", "zoo:mlp", "--target-macs", "0.5", "--allocation", "coreset", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--allocation coreset measures each group's sensitivity on data: pass --data" in err
    assert err.count("\n") == 1 and not (tmp_path / "o").exists()
