"""LR schedules: every curve against its formula (and torch's schedulers where torch has one)."""
from __future__ import annotations

import math

import pytest
import torch

from structprune.recover.schedules import SCHEDULES, allr_initial_lr, lr_at, relative_norm_drop, silo_max_lr

T = 200


def _curve(schedule: str, total: int = T, base: float = 0.1, **params) -> list[float]:
    return [lr_at(schedule, s, total, base, **params) for s in range(total)]


def _torch_curve(make_scheduler, total: int, base: float) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
    scheduler = make_scheduler(opt)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return lrs


def test_constant_is_flat() -> None:
    assert _curve("constant") == [0.1] * T


def test_cosine_matches_formula_and_torch() -> None:
    expected = [0.1 * (1 + math.cos(math.pi * s / T)) / 2 for s in range(T)]
    assert _curve("cosine") == pytest.approx(expected, abs=1e-12)
    reference = _torch_curve(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=T), T, 0.1)
    assert _curve("cosine") == pytest.approx(reference, abs=1e-9)


def test_onecycle_matches_torch() -> None:
    reference = _torch_curve(lambda o: torch.optim.lr_scheduler.OneCycleLR(o, max_lr=0.1, total_steps=T), T, 0.1)
    assert _curve("onecycle") == pytest.approx(reference, rel=1e-6, abs=1e-12)
    assert max(_curve("onecycle")) == pytest.approx(0.1)


def test_step_decays_by_gamma_at_milestones() -> None:
    curve = _curve("step")
    assert curve[0] == curve[99] == 0.1
    assert curve[100] == pytest.approx(0.01) and curve[149] == pytest.approx(0.01)
    assert curve[150] == pytest.approx(0.001)


@pytest.mark.parametrize("schedule", ["llr", "allr"])
def test_llr_warms_up_10_percent_then_decays_linearly_to_zero(schedule: str) -> None:
    w = int(0.1 * T)
    expected = [0.1 * (s + 1) / w if s < w else 0.1 * (T - s) / (T - w) for s in range(T)]
    curve = _curve(schedule)
    assert curve == pytest.approx(expected, abs=1e-12)
    assert curve[w - 1] == pytest.approx(0.1) and max(curve) == pytest.approx(0.1)
    assert curve[-1] == pytest.approx(0.1 / (T - w))  # one step before reaching 0 at s = T


def test_lrw_replays_the_last_part_of_the_original_schedule() -> None:
    dense_total, retrain = 1000, 200
    curve = _curve("lrw", retrain, 0.1, dense_total_steps=dense_total, dense_schedule="step")
    original = _curve("step", dense_total, 0.1)
    assert curve == original[-retrain:]
    cosine = _curve("lrw", retrain, 0.1, dense_total_steps=dense_total)
    assert cosine == _curve("cosine", dense_total, 0.1)[-retrain:]


def test_lrw_longer_than_the_original_starts_at_its_beginning() -> None:
    curve = _curve("lrw", 50, 0.1, dense_total_steps=20, dense_schedule="cosine")
    assert curve[:20] == _curve("cosine", 20, 0.1) and curve[20:] == [curve[19]] * 30


def test_silo_cycle_warms_up_then_steps_down() -> None:
    curve = _curve("silo", T, 0.05)
    w = int(0.1 * T)
    assert curve[:w] == pytest.approx([0.05 * (s + 1) / w for s in range(w)])
    assert curve[w:100] == pytest.approx([0.05] * (100 - w))
    assert curve[100:150] == pytest.approx([0.005] * 50) and curve[150:] == pytest.approx([0.0005] * 50)


@pytest.mark.parametrize("cycle", [1, 2, 3, 5, 8, 13])
def test_silo_max_lr_follows_the_s_curve(cycle: int) -> None:
    p, alpha, beta, offset = 0.2, 0.04, 5.0, 0.03
    pruned = 1 - (1 - p) ** (cycle - 1)
    expected = offset if pruned == 0 else alpha / (1 + (pruned / (1 - pruned)) ** (-beta)) + offset
    assert silo_max_lr(cycle, p, alpha, beta, offset) == pytest.approx(expected)


def test_silo_max_lr_rises_monotonically_from_offset_to_alpha_plus_offset() -> None:
    values = [silo_max_lr(c) for c in range(1, 40)]
    assert values[0] == 0.03 and values[-1] == pytest.approx(0.07, abs=1e-6)
    assert all(b >= a for a, b in zip(values, values[1:]))
    assert silo_max_lr(4) == pytest.approx(0.04 / (1 + (0.488 / 0.512) ** -5) + 0.03)  # the midpoint region


def test_allr_scales_by_relative_norm_drop_over_sqrt_fraction() -> None:
    d = relative_norm_drop(10.0, 9.0)
    assert d == pytest.approx(math.sqrt(19.0) / 10.0)
    assert allr_initial_lr(0.1, 10.0, 9.0, fraction_pruned=0.5) == pytest.approx(0.1 * d / math.sqrt(0.5))
    assert allr_initial_lr(0.1, 10.0, 0.0, fraction_pruned=0.1) == 0.1              # clipped at η0
    floor = allr_initial_lr(0.1, 10.0, 9.999, fraction_pruned=0.5, retrain_epochs=5, dense_epochs=20)
    assert floor == pytest.approx(0.025)                                             # min(5/20, 1)·η0


def test_unknown_schedule_and_out_of_range_steps_raise() -> None:
    with pytest.raises(ValueError, match="unknown LR schedule"):
        lr_at("exponential", 0, 10, 0.1)
    with pytest.raises(ValueError, match="outside"):
        lr_at("cosine", 10, 10, 0.1)
    assert set(SCHEDULES) == {"constant", "cosine", "onecycle", "step", "llr", "allr", "lrw", "silo"}
