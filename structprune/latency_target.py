"""Prune to a latency budget: `compress(model, x, target_latency_ms=4.0)` (CLI `--target-latency-ms 4`).

Latency cannot be costed on the channel graph, so it is measured: an allocation's cuts form a ladder from
dense (step 0) to the most it may remove (step K; `TargetSearch.ladder`: global pruning's ranking one
channel at a time, uniform's ratios, or a sensitivity table's ranking), and the measured function maps a
step to the plan of that cut, the model verification hands over for it (`verified_rewrite`: groups whose
rewrite fails are kept whole, so every candidate runs), and its onnxruntime median latency (`ort_latency_ms`:
1 thread, the example inputs, RUNS timed calls after WARMUP; `config.latency_measure` replaces it).

Every candidate is timed on the dense model's clock (`PinnedLatency`): its runs alternate with the dense
model's in one process, and its figure is the dense reference (timed once, first) times the ratio of the two
medians. A machine that other jobs share drifts by tens of percent between measurements a minute apart; the
ratio of two models timed in alternation does not, so the search compares candidates as if all were timed
beside the reference. The report gives the range of dense medians seen (`dense_ms_seen`): how much the
machine drifted during the search.

The search brackets the target between a step that is too slow (lo; at first the dense model) and one
that is fast enough (hi; at first step K, or 3K/4 or K/2 where step K is not: very thin layers can hit slow
kernels, so latency is not always lowest at the deepest cut), and measures a step in between until one
lands within the tolerance (2%) of the target. Latency falls roughly linearly with the MACs removed, so the
next step is where the line through the bracket's (MACs, ms) ends reaches the target (MACs read from
PlanCost, free), kept inside the bracket's middle half so that a bad guess still shrinks it as bisection
does. Where no step lands in the band (measurement noise, or one channel moving latency by more than the
band) after PROBES steps or when the bracket closes, the least pruned step measured fast enough is kept,
and the report says so. A dense model already faster than the target, or a target out of reach at those
steps, is a PlanError with the figures.

Cuts that pay: onnxruntime's CPU convolutions (MLAS NCHWc) take channels in blocks of 8; a Conv with another
count falls back to NCHW kernels with layout reorders around it, and a depthwise Conv gets several times
slower (benchmarks/latency_profile.py: at 2x fewer MACs, mobilenet_v2 ran 0.58x as fast as dense unrounded,
1.56x with counts multiple of 8). So unless `round_to` is given (an explicit 1 included), the search cuts
at LATENCY_ROUND_TO, which `selection.channel_multiple` applies to every layer a group touches. Where that
default multiple cannot reach the target (groups narrower than 16 channels can only stay whole, e.g. a
DenseNet's growth-rate-8 layers), the search runs again at any channel count and `meta["target"]` says so;
a round_to the user gave is never relaxed.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from structprune.errors import PlanError
from structprune.selection import LatencyTarget, Plan, PlanCost, SensitivityTable
from structprune.selection.target_search import Ladder, TargetSearch
from structprune.selection.targets import active_groups, allocation_ranking, cut_plan
from structprune.verified import verified_rewrite

PROBES = 12  # measured steps (besides dense and the deepest cut) before the search settles
LATENCY_ROUND_TO = 8  # channel multiple of onnxruntime's NCHWc conv kernels, unless round_to is given
RUNS, WARMUP = 20, 5  # onnxruntime calls per measurement, as the report's latency
Measure = Callable[[Any, Any], float]  # (model, example_inputs) -> milliseconds


class UnreachableLatency(PlanError):
    """No cut the search may measure runs as fast as the target."""


@dataclass(frozen=True)
class LatencySearch:
    """The outcome: the chosen `step` and its latency `ms`, the dense model's `dense_ms`, every measured
    (step, ms) in `probes`, and whether `ms` is within the target's tolerance (`met`)."""

    step: int
    ms: float
    dense_ms: float
    probes: tuple[tuple[int, float], ...]
    met: bool


def ort_latency_ms(model, example_inputs: Any, *, runs: int = RUNS, warmup: int = WARMUP) -> float:
    """onnxruntime median latency of `model` on `example_inputs`, in ms (exported to a temporary file).

    >>> import torch
    >>> ort_latency_ms(torch.nn.Linear(4, 2), torch.randn(2, 4), runs=3, warmup=1) > 0
    True
    """
    from structprune.onnx import export_onnx, ort_latency  # lazy: onnx and onnxruntime load only when measuring

    with tempfile.TemporaryDirectory() as tmp:
        exported = export_onnx(model, example_inputs, os.path.join(tmp, "candidate.onnx"))
        return ort_latency(exported.path, example_inputs, runs=runs, warmup=warmup).median_ms


class PinnedLatency:
    """onnxruntime latency on the dense model's clock; a `Measure` to use as a context manager (the ONNX
    files live in a temporary folder removed after). The first call times the dense model (beside itself:
    the reference); each later call times its model alternately with the dense one (`compare`, default
    `structprune.onnx.compare_latency`) and returns reference x candidate median / dense median.

    >>> import torch
    >>> dense = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    >>> with PinnedLatency(dense, torch.randn(8, 64), runs=3, warmup=1) as measure:
    ...     measure(dense, None) == measure.reference_ms > 0, measure(torch.nn.Linear(64, 2), None) > 0
    (True, True)
    """

    def __init__(self, dense, example_inputs: Any, *, runs: int = RUNS, warmup: int = WARMUP,
                 compare: Callable | None = None) -> None:
        from structprune.onnx import compare_latency  # lazy: onnxruntime loads only when measuring

        self.dense, self.example_inputs, self.runs, self.warmup = dense, example_inputs, runs, warmup
        self.compare = compare or compare_latency
        self.reference_ms: float | None = None
        self.dense_seen: list[float] = []
        self._folder = tempfile.TemporaryDirectory(prefix="structprune-latency-")
        self._dense_path = self._export(dense, "dense")

    def __enter__(self) -> PinnedLatency:
        return self

    def __exit__(self, *exc_info) -> None:
        self._folder.cleanup()

    def __call__(self, model, example_inputs: Any = None) -> float:
        if self.reference_ms is None:
            first, second, _ = self._timed(self._dense_path)
            self.reference_ms = (first.median_ms + second.median_ms) / 2
            self.dense_seen.append(self.reference_ms)
        if model is self.dense:
            return self.reference_ms
        dense, candidate, _ = self._timed(self._export(model, "candidate"))
        self.dense_seen.append(dense.median_ms)
        return self.reference_ms * candidate.median_ms / max(dense.median_ms, 1e-9)

    def _timed(self, path: str):
        return self.compare(self._dense_path, path, self.example_inputs, runs=self.runs, warmup=self.warmup)

    def drift_meta(self) -> dict:
        """The report's figures on the clock: the dense medians' range over the search."""
        return {"clock": "pinned to the dense model, timed alternately",
                "dense_ms_seen": [round(min(self.dense_seen), 4), round(max(self.dense_seen), 4)]}

    def _export(self, model, name: str) -> str:
        from structprune.onnx import export_onnx

        return os.fspath(export_onnx(model, self.example_inputs, os.path.join(self._folder.name, f"{name}.onnx")).path)


def search_latency(target: LatencyTarget, steps: int, macs_at: Callable[[int], float],
                   measure: Callable[[int], float], *, probes: int = PROBES) -> LatencySearch:
    """Search steps 0 .. `steps` for one whose measured latency (`measure(step)`, ms) is within `target`'s
    tolerance; `macs_at(step)` is the kept share of MACs there, which guides the next probe (module docstring).

    >>> search = search_latency(LatencyTarget(5.0), 100, lambda k: 1 - k / 100, lambda k: 10 - k / 10)
    >>> search.step, search.met, len(search.probes)
    (50, True, 3)
    """
    seen: dict[int, float] = {}

    def at(step: int) -> float:
        if step not in seen:
            seen[step] = float(measure(step))
        return seen[step]

    dense = at(0)
    _check_not_dense(target, dense)
    hi = _fast_end(target, steps, at)
    _check_reachable(target, dense, min(seen.values()))
    if target.met(dense) or target.met(seen[hi]):
        step = 0 if target.met(dense) else hi
        return LatencySearch(step, seen[step], dense, tuple(seen.items()), True)
    lo = 0
    while hi - lo > 1 and len(seen) < probes + 2:
        step = _next_step(target.ms, lo, hi, (at(lo), at(hi)), macs_at)
        if target.met(at(step)):
            return LatencySearch(step, seen[step], dense, tuple(seen.items()), True)
        lo, hi = (step, hi) if seen[step] > target.ms else (lo, step)
    return LatencySearch(hi, seen[hi], dense, tuple(seen.items()), False)


def _fast_end(target: LatencyTarget, steps: int, at: Callable[[int], float]) -> int:
    """The first of the deepest cut, 3/4 and 1/2 of it that runs at or under the target band's top (the
    deepest cut is not always the fastest: very thin layers can hit slow kernels); the deepest otherwise."""
    for step in dict.fromkeys((steps, steps * 3 // 4, steps // 2)):
        if at(step) <= target.ms or target.met(at(step)):
            return step
    return steps


def _check_not_dense(target: LatencyTarget, dense: float) -> None:
    if dense < target.ms and not target.met(dense):
        raise PlanError(f"target_latency_ms={target.ms:g} is above the dense model's {dense:.3f} ms on this machine: "
                        f"nothing to prune; pass a smaller target (e.g. {dense / 2:.3g} for 2x faster)")


def _check_reachable(target: LatencyTarget, dense: float, fastest: float) -> None:
    if fastest > target.ms and not target.met(fastest):
        raise UnreachableLatency(f"target_latency_ms={target.ms:g} cannot be met: the fastest cut measured "
                                 f"({target.allocation} allocation as deep as allowed, and 3/4 and 1/2 of that) takes "
                                 f"{fastest:.3f} ms (dense {dense:.3f} ms); the best achievable is {fastest:.3f} ms")


def _next_step(target_ms: float, lo: int, hi: int, ms: tuple[float, float], macs_at: Callable[[int], float]) -> int:
    """Where the line through the bracket's (MACs, ms) ends meets the target, inside the middle half."""
    m_lo, m_hi = macs_at(lo), macs_at(hi)
    wanted = m_lo + (target_ms - ms[0]) * (m_hi - m_lo) / (ms[1] - ms[0])
    a, b = lo, hi  # the first step whose MACs are at most `wanted` (MACs fall as steps rise)
    while b - a > 1:
        mid = (a + b) // 2
        a, b = (mid, b) if macs_at(mid) > wanted else (a, mid)
    margin = max(1, (hi - lo) // 4)
    return int(np.clip(b, lo + margin, hi - margin)) if hi - lo > 2 else lo + 1


def plan_for_latency(model, example_inputs: Any, graph, scores: Mapping[str, np.ndarray], config, *,
                     keep_whole: Mapping[str, str] | None = None, meta: Mapping | None = None,
                     sensitivity: SensitivityTable | None = None) -> Plan:
    """The plan whose rewritten model runs closest to `config.target` (a LatencyTarget), measured with
    `config.latency_measure` (default: onnxruntime on the dense model's clock, `PinnedLatency`); the search's
    figures go into `meta["target"]`. `config` supplies the target, allocation, round_to, ignore,
    max_group_ratio and shrink_rules."""
    if config.latency_measure is not None:
        return _plan_measured(model, example_inputs, graph, scores, config, keep_whole, meta, sensitivity,
                              config.latency_measure)
    with PinnedLatency(model, example_inputs) as pinned:
        plan = _plan_measured(model, example_inputs, graph, scores, config, keep_whole, meta, sensitivity, pinned)
        return plan.with_meta(target={**plan.meta["target"], **pinned.drift_meta()})


def _plan_measured(model, example_inputs: Any, graph, scores: Mapping[str, np.ndarray], config,
                   keep_whole: Mapping[str, str] | None, meta: Mapping | None, sensitivity: SensitivityTable | None,
                   measure: Measure) -> Plan:
    """plan_for_latency with `measure` as the clock: at LATENCY_ROUND_TO, then at any count if that cannot
    reach the target and the user gave no round_to."""
    round_to = latency_round_to(config)
    try:
        return _search_plan(model, example_inputs, graph, scores, config.with_options(round_to=round_to),
                            keep_whole, meta, sensitivity, measure)
    except UnreachableLatency as error:
        if round_to == 1 or getattr(config, "round_to_given", True):
            raise
        fallback = {**(meta or {}), "round_to_fallback": f"cuts at multiples of {round_to} channels could not "
                                                          f"reach the target ({error.message}); cut at any count"}
        return _search_plan(model, example_inputs, graph, scores, config.with_options(round_to=1),
                            keep_whole, fallback, sensitivity, measure)


def _search_plan(model, example_inputs: Any, graph, scores: Mapping[str, np.ndarray], config,
                 keep_whole: Mapping[str, str] | None, meta: Mapping | None, sensitivity: SensitivityTable | None,
                 measure: Measure) -> Plan:
    """The latency search at `config.round_to`, as given, with `measure` as the clock."""
    target: LatencyTarget = config.target
    whole = dict(keep_whole or {})
    active = active_groups(graph, config, whole)
    search = TargetSearch(graph, active, scores, target, config.round_to, PlanCost(graph), len(whole))
    ladder = search.ladder(target.allocation, config.max_group_ratio,
                           allocation_ranking(target.allocation, sensitivity, active, config))
    channels = max(sum(g.size for g in active), 1)

    def plan_at(step: int, extra: Mapping | None = None) -> Plan:
        removed = ladder.counts(step)
        return cut_plan(graph, config, search, removed, sum(removed.values()) / channels, whole,
                        {**(meta or {}), **(extra or {})})

    def measured(step: int) -> float:  # the model verification would hand over for this cut
        pruned = model if step == 0 else verified_rewrite(model, example_inputs, plan_at(step), graph, config).model
        return measure(pruned, example_inputs)

    found = search_latency(target, ladder.steps, lambda k: search.fraction(ladder.counts(k)), measured)
    return plan_at(found.step, {"target": _target_meta(target, found, ladder)})


def latency_round_to(config) -> int:
    """The channel multiple a latency search cuts at: the config's round_to if given, else LATENCY_ROUND_TO."""
    return config.round_to if getattr(config, "round_to_given", True) else LATENCY_ROUND_TO


def _target_meta(target: LatencyTarget, found: LatencySearch, ladder: Ladder) -> dict:
    return {"kind": target.kind, "ms": target.ms, "allocation": target.allocation, "measured_ms": round(found.ms, 4),
            "dense_ms": round(found.dense_ms, 4), "probes": len(found.probes), "met": found.met,
            "step": found.step, "steps": ladder.steps}


def meet_latency_target(target: LatencyTarget, choose: Callable[[Mapping[str, str]], Plan],
                        rewrite: Callable[[Plan], Any]) -> tuple[Any, dict]:
    """Plan (`choose({})`, `plan_for_latency`), rewrite and verify (`rewrite(plan)`); returns the result and
    the report's `target` section. The search measured each candidate as verification hands it over
    (groups it keeps whole included), so the chosen plan's figure is the verified model's."""
    plan = choose({})
    found = dict(plan.meta["target"])
    section = {key: found[key] for key in ("dense_ms", "probes", "clock", "dense_ms_seen") if key in found}
    notes = []
    if plan.meta.get("round_to_fallback"):
        notes.append(plan.meta["round_to_fallback"])
    if not found["met"]:
        notes.append(f"no measured cut landed within the tolerance after {found['probes']} measurements; "
                     "this is the least pruned one measured at or below the target")
    if notes:
        section["note"] = "; ".join(notes)
    return rewrite(plan), target.section(found["measured_ms"], 1, **section)
