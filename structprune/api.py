"""The Python API: analyze, select, apply_plan, compress. The CLI only parses and calls these."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterable

import copy

import torch
from torch import fx, nn

from structprune.capture import capture
from structprune.criteria import ScoringContext, get_criterion
from structprune.errors import AnalysisError, PlanError, RewriteError, VerificationError, stage_errors
from structprune.graph.build import build_channel_graph
from structprune.graph.channel_graph import ChannelGraph
from structprune.report.metrics import count_macs, count_params, macs_of
from structprune.report.prunable import prunable_section
from structprune.report.report import GroupRow, Report
from structprune.rewrite import rewrite_model
from structprune.rewrite.attention_attrs import attention_shape
from structprune.rewrite.width_attrs import (AS_IS_KEY, kept_as_is, qualified_name, refreshed_attributes,
                                             refreshed_in)
from structprune.rules import DEFAULT_RULES, check_attention_mode
from structprune.scoring import group_views
from structprune.selection import Plan, check_ratio, select_plan
from structprune.verify import Verdict, run_model, verify_rewrite


@dataclass(frozen=True, eq=False)
class CompressResult:
    """The pruned model, the plan that made it, the report, and the analysis it came from."""

    model: nn.Module
    plan: Plan
    report: Report
    graph: ChannelGraph


def analyze(model: nn.Module, example_inputs: Any, *, rules: Mapping = DEFAULT_RULES,
            attention: str = "heads", input_width_ties: Iterable[str] = ()) -> ChannelGraph:
    """Capture the model and find every group of coupled channels. `attention="head_dims"` prunes
    attention by per-head dims (every head keeps its count, all lose the same dims) instead of heads.

    >>> import torch
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    >>> cg = analyze(net, torch.randn(1, 3, 8, 8))
    >>> [(g.id, g.size) for g in cg.prunable]
    [('0.weight:0', 8)]
    """
    check_attention_mode(attention)  # an unknown mode fails before the (slower) capture
    modules = None if isinstance(model, fx.GraphModule) else dict(model.named_modules())
    ties = frozenset(type(m) for m in (modules or {}).values() if class_name(type(m)) in set(input_width_ties))
    captured = capture(model, example_inputs)
    with stage_errors(AnalysisError, "finding the coupled channels of the captured graph"):
        return build_channel_graph(captured, rules=rules, modules=modules, attention=attention,
                                   input_width_ties=ties)


class_name = qualified_name  # plans record the attention classes tied to their input width by this name


def select(model: nn.Module, example_inputs: Any, graph: ChannelGraph, *, ratio: float = 0.5,
           criterion: Any = "l2", ignore: Iterable[str] = (), round_to: int = 1,
           global_pruning: bool = False, max_group_ratio: float = 0.9, seed: int = 0, data: Any = None) -> Plan:
    """Score the prunable groups with `criterion` and choose the channels to keep."""
    check_ratio(ratio)
    crit = get_criterion(criterion)
    if getattr(crit, "needs_data", False) and data is None:
        raise PlanError(f"criterion '{crit.name}' is data-driven: pass data=... (a DataLoader, or --data SPEC)")
    ctx = ScoringContext(model, example_inputs, data, seed)
    with stage_errors(PlanError, f"scoring the groups with criterion '{crit.name}'"):
        views = group_views(graph, model)
        scores = crit.score(views, ctx)
    meta = {"criterion": crit.name, "seed": seed, "attention": graph.attention}
    plan = select_plan(graph.groups, scores, ratio=ratio, global_pruning=global_pruning, round_to=round_to,
                       ignore=ignore, max_group_ratio=max_group_ratio, meta=meta)
    if callable(getattr(crit, "select", None)):
        plan = _criterion_selection(crit, views, ctx, plan)
    return plan


def _criterion_selection(crit, views, ctx, plan: Plan) -> Plan:
    """Criteria that are not a top-k (i-SpaSP, coreset) choose the kept channels themselves, given the
    planner's keep count per group (ignored and blocked groups stay whole)."""
    active = [v for v in views if v.group_id in plan.pruned_groups()]
    counts = {v.group_id: len(plan.keep[v.group_id]) for v in active}
    selection = crit.select(active, ctx, counts) if active else None
    if selection is None:
        return plan
    keep = {**dict(plan.keep), **{g: tuple(sorted(k)) for g, k in selection.keep.items()}}
    return Plan(keep, plan.sizes, {**dict(plan.meta), **dict(selection.meta)})


def apply_plan(model: nn.Module, example_inputs: Any, plan: Plan, *, graph: ChannelGraph | None = None,
               verify: bool = True, recapture: bool = True) -> nn.Module:
    """Apply a saved plan (no scoring) and verify the result; raises VerificationError on failure.
    `recapture=False` verifies without re-exporting the pruned model (see `compress`).

    >>> import torch
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> plan = Plan({"0.weight:0": (0, 1, 2)}, {"0.weight:0": 8})
    >>> apply_plan(net, torch.randn(2, 4), plan)[0].out_features
    3
    """
    graph = graph or analyze(model, example_inputs, **plan_analysis(plan))
    if not verify:
        return rewrite_model(model, graph, plan)
    return compress_with_plan(model, example_inputs, plan, graph=graph, recapture=recapture).model


def plan_attention(plan: Plan) -> str:
    """The attention mode a plan was made in (plans from before the mode existed: "heads")."""
    return str(plan.meta.get("attention", "heads"))


def plan_analysis(plan: Plan) -> dict:
    """The `analyze` options a plan was made with, so that re-applying it finds the same groups."""
    return {"attention": plan_attention(plan), "input_width_ties": tuple(plan.meta.get(TIES_KEY, ()))}


MAX_REPLANS = 4  # verification rounds that may block localised groups before the failure is final
TIES_KEY = "input_width_ties"  # plan.meta: attention classes whose heads x head_dim follows their input


class _InputWidthTieNeeded(Exception):
    """Re-capture failed in an attention module of a class not yet tied to its input width."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def compress_with_plan(model: nn.Module, example_inputs: Any, plan: Plan, *, graph: ChannelGraph | None = None,
                       recapture: bool = True, strict: bool = False, _may_tie: bool = False) -> CompressResult:
    """Like compress, but with a given plan instead of scoring (what `structprune apply` runs).

    When verification localises a failure to groups (masking equivalence names them, or re-capture
    fails inside a module), those groups are kept whole and the rest is rewritten and verified again,
    at most MAX_REPLANS times; `plan.meta["blocked_by_verification"]` says which and why. A model is
    never returned unverified. `strict=True` raises on the first failure instead."""
    graph = graph or analyze(model, example_inputs, **plan_analysis(plan))
    for _ in range(MAX_REPLANS + 1):
        with stage_errors(RewriteError, f"rewriting the model for {len(plan.pruned_groups())} pruned groups"):
            pruned = rewrite_model(model, graph, plan)
        with stage_errors(VerificationError, "verifying the rewrite"):
            verdict = verify_rewrite(model, pruned, example_inputs, graph, plan, recapture=recapture)
        if _may_tie and not verdict.ok:
            _raise_if_a_tie_may_help(model, verdict, plan)
        if not verdict.ok and _refresh_rejected(model, pruned, verdict, plan):
            plan = plan.with_meta(**{AS_IS_KEY: sorted(kept_as_is(plan) | {_failing_class(model, verdict)})})
            continue
        if verdict.ok or strict or not verdict.failing_groups:
            break
        plan = plan.keeping_whole({g: f"verification_failed: {what}" for g, what in verdict.failing_groups})
    _raise_if_failed(verdict)
    with stage_errors(VerificationError, "measuring the pruned model for the report"):
        report = build_report(model, pruned, example_inputs, graph, plan, verdict)
    from structprune.calibrate import SCALES_KEY, apply_channel_scales

    if SCALES_KEY in plan.meta:  # a sampled selection (coreset_sampled) rescales kept channels
        report = report.with_extra(rescaled_tensors=apply_channel_scales(pruned, graph, plan))
    return CompressResult(pruned, plan, report, graph)


def _failing_class(model: nn.Module, verdict: Verdict) -> str:
    return qualified_name(type(model.get_submodule(verdict.failing_module)))


def _refresh_rejected(model: nn.Module, pruned: nn.Module, verdict: Verdict, plan: Plan) -> bool:
    """Verification failed in a module whose width attributes the rewrite refreshed (and whose class
    is not yet left as it is): the next round keeps that class's attributes as they were."""
    if verdict.failing_module is None or not refreshed_in(model, pruned, verdict.failing_module):
        return False
    return _failing_class(model, verdict) not in kept_as_is(plan)


def _raise_if_a_tie_may_help(model: nn.Module, verdict: Verdict, plan: Plan) -> None:
    """Signal `compress` to analyse again with the failing attention class tied to its input width."""
    try:
        module = model.get_submodule(verdict.failing_module) if verdict.failing_module is not None else None
    except AttributeError:
        return
    if module is not None and attention_shape(module) is not None:
        name = class_name(type(module))
        if name not in plan.meta.get(TIES_KEY, ()):
            raise _InputWidthTieNeeded(name)


def compress(model: nn.Module, example_inputs: Any, *, ratio: float = 0.5, criterion: Any = "l2",
             ignore: Iterable[str] = (), round_to: int = 1, global_pruning: bool = False,
             max_group_ratio: float = 0.9, seed: int = 0, data: Any = None, recalibrate_bn: bool = True,
             reconstruct: bool | None = None, rules: Mapping = DEFAULT_RULES,
             attention: str = "heads", recapture: bool = True, strict: bool = False) -> CompressResult:
    """Analyze, score, select, rewrite and verify. The caller's model is never modified.
    Groups whose rewrite fails verification are kept whole and the rest verified again (see
    `compress_with_plan`); `strict=True` fails instead.
    `attention` is "heads" (drop whole heads) or "head_dims" (drop the same dims from every head).
    `recapture=False` skips verification's torch.export of the pruned model (a third of the time on
    a ResNet-50); shapes, sizes and masking equivalence are still checked, and MACs are counted on
    the verification forward. For loops that compress many times; the default verifies fully.

    >>> import torch, models_zoo
    >>> net = models_zoo.create("resnet20").eval()
    >>> result = compress(net, torch.randn(1, 3, 32, 32), ratio=0.5)
    >>> result.report.verification["ok"], result.report.params_after < result.report.params_before
    (True, True)
    """
    check_ratio(ratio)
    crit = get_criterion(criterion)
    ties: tuple[str, ...] = ()
    for _ in range(MAX_REPLANS + 1):
        graph = analyze(model, example_inputs, rules=rules, attention=attention, input_width_ties=ties)
        plan = select(model, example_inputs, graph, ratio=ratio, criterion=crit, ignore=ignore,
                      round_to=round_to, global_pruning=global_pruning, max_group_ratio=max_group_ratio,
                      seed=seed, data=data)
        plan = plan.with_meta(**{TIES_KEY: list(ties)}) if ties else plan
        try:
            result = compress_with_plan(model, example_inputs, plan, graph=graph, recapture=recapture,
                                        strict=strict, _may_tie=len(ties) < MAX_REPLANS)
            break
        except _InputWidthTieNeeded as needed:
            ties += (needed.name,)
    if data is None:
        return result
    refit = bool(getattr(crit, "needs_data", False)) if reconstruct is None else reconstruct
    return calibrate(model, result, example_inputs, data, recalibrate_bn=recalibrate_bn, reconstruct=refit,
                     seed=seed)


def calibrate(model: nn.Module, result: CompressResult, example_inputs: Any, data: Any, *,
              recalibrate_bn: bool = True, reconstruct: bool = False, seed: int = 0) -> CompressResult:
    """After a verified rewrite: re-estimate BatchNorm statistics and/or refit consumer layers by least
    squares on calibration data. These change weights on purpose, so they run after the structural
    verification; the calibrated model is then checked to run and give finite outputs of the same shapes."""
    from structprune.calibrate import recalibrate_batchnorm
    from structprune.calibrate import reconstruct as refit_layers

    pruned, section = copy.deepcopy(result.model), {}
    if reconstruct:
        fits = refit_layers(model, pruned, result.graph, result.plan, data, seed=seed)
        section["reconstructed_layers"] = len(fits.layers)
    if recalibrate_bn:
        section["batchnorm_layers_recalibrated"] = recalibrate_batchnorm(pruned, data)
    shapes = [tuple(t.shape) for t in run_model(result.model, example_inputs)]
    out = run_model(pruned, example_inputs)
    if [tuple(t.shape) for t in out] != shapes or not all(bool(torch.isfinite(t).all()) for t in out):
        raise VerificationError("calibration produced a model with different output shapes or non-finite outputs")
    return CompressResult(pruned, result.plan, result.report.with_extra(calibration=section), result.graph)


def export(model: nn.Module, example_inputs: Any, path, *, dense: nn.Module | None = None,
           latency_runs: int = 20) -> dict:
    """Export to ONNX, check onnxruntime against torch (VerificationError if they differ), and with the
    dense model at hand compare onnxruntime latency. Returns the report's `onnx` section.

    >>> import torch, tempfile, os
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> export(net, torch.randn(2, 4), os.path.join(tempfile.mkdtemp(), "m.onnx"))["parity"]["ok"]
    True
    """
    import os
    import tempfile

    from structprune.onnx import check_parity, compare_latency, export_onnx, onnx_section

    exported = export_onnx(model, example_inputs, path)
    parity = check_parity(model, exported.path, example_inputs, dynamic_batch=exported.dynamic_batch,
                          dynamic_sequence=exported.dynamic_sequence)
    if not parity.ok:
        os.remove(exported.path)
        raise VerificationError(f"onnxruntime output differs from the torch model (max abs error "
                                f"{parity.max_abs_error:.3g}, max rel error {parity.max_rel_error:.3g}) {parity.detail}")
    latency = None
    if dense is not None:
        with tempfile.TemporaryDirectory() as tmp:
            reference = export_onnx(dense, example_inputs, os.path.join(tmp, "dense.onnx"))
            latency = compare_latency(reference.path, exported.path, example_inputs, runs=latency_runs)
    return onnx_section(exported, parity, latency)


def build_report(model, pruned, example_inputs, graph: ChannelGraph, plan: Plan, verdict: Verdict) -> Report:
    """Params and MACs before/after, one row per group (groups that verification blocked are shown
    blocked, with its reason), the verdict and the plan's settings."""
    blocked = dict(plan.meta.get("blocked_by_verification", {}))
    rows = tuple(
        GroupRow(g.id, g.size, len(plan.keep.get(g.id, range(g.size))), g.prunable and g.id not in blocked,
                 g.exact, blocked.get(g.id) or "; ".join(sorted({str(r) for r in g.reasons}))
                 or ", ".join(g.inexact_ops))
        for g in graph.groups
    )
    pruned_macs = verdict.pruned_macs if verdict.pruned_macs is not None else count_macs(pruned, example_inputs)
    report = Report(count_params(model), count_params(pruned), macs_of(graph.captured), pruned_macs, rows,
                    verdict.to_json(), dict(plan.meta))
    report = report.with_extra(prunable=prunable_section(graph, [r.id for r in rows if r.prunable]))
    refreshed = refreshed_attributes(model, pruned)
    return report.with_extra(refreshed_attributes=list(refreshed)) if refreshed else report


def _raise_if_failed(verdict: Verdict) -> None:
    if not verdict.ok:
        raise VerificationError(
            "the pruned model failed verification and is not returned: " + "; ".join(verdict.failures())
        )
