"""The Python API: analyze, select, compress, apply_plan, recalibrate, export. The CLI only parses and calls these.

Entry points that prune take their options as a CompressConfig (`config=`) and/or keyword arguments
named like its fields, laid over `config`; the options are checked once, when the config is built.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
import warnings
from collections.abc import Mapping
from typing import Any, Iterable

import torch
from torch import fx, nn

from structprune.calibrate import recalibrate_batchnorm
from structprune.calibrate import reconstruct as refit_layers  # `recalibrate` has a flag named `reconstruct`
from structprune.capture import capture
from structprune.compress_config import CompressConfig, compress_config
from structprune.criteria import get_criterion
from structprune.data.recording import RecordedData, recording_of
from structprune.data.running import eval_outputs
from structprune.errors import AnalysisError, UsageError, VerificationError, stage_errors
from structprune.graph.channel_graph import ChannelGraph
from structprune.hf import is_hf_model, restore_runtime_flags, update_config, with_hf_shrink_rules, without_cache
from structprune.latency_target import meet_latency_target
from structprune.planning import plan_groups, score_groups, with_sensitivity
from structprune.rewrite import rewrite_model
from structprune.rules import DEFAULT_RULES, check_attention_mode
from structprune.rules.build import build_channel_graph
from structprune.rules.modules import DEFAULT_MODULE_RULES
from structprune.selection import Plan, meet_target
from structprune.verified import (
    MAX_REPLANS,
    TIES_KEY,
    CompressResult,
    InputWidthTieNeeded,
    build_report,  # noqa: F401 - re-exported: benchmarks time the report step
    class_name,
    verified_rewrite,
)

__all__ = ["CompressConfig", "CompressResult", "analyze", "apply_plan", "compress", "export", "recalibrate", "select"]


def analyze(model: nn.Module, example_inputs: Any, *, rules: Mapping = DEFAULT_RULES,
            module_rules: Mapping = DEFAULT_MODULE_RULES, attention: str = "heads",
            input_width_ties: Iterable[str] = ()) -> ChannelGraph:
    """Capture the model and find every group of coupled channels. `rules` (op key -> rule) and
    `module_rules` (module class -> rule) are the tables; extend the defaults for a custom layer.
    `attention="head_dims"` prunes attention by per-head dims (every head keeps its count, all lose
    the same dims) instead of heads.

    >>> import torch
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    >>> cg = analyze(net, torch.randn(1, 3, 8, 8))
    >>> [(g.id, g.size) for g in cg.prunable]
    [('0.weight:0', 8)]
    """
    check_attention_mode(attention)  # an unknown mode fails before the (slower) capture
    modules = None if isinstance(model, fx.GraphModule) else dict(model.named_modules())
    ties = frozenset(type(m) for m in (modules or {}).values() if class_name(type(m)) in set(input_width_ties))
    with without_cache(model):  # a Hugging Face causal LM returns a KV cache torch.export cannot capture
        captured = capture(model, example_inputs)
    with stage_errors(AnalysisError, "finding the coupled channels of the captured graph"):
        return build_channel_graph(captured, rules=rules, modules=modules, module_rules=module_rules,
                                   attention=attention, input_width_ties=ties)


def select(model: nn.Module, example_inputs: Any, graph: ChannelGraph, *, config: CompressConfig | None = None,
           data: Any = None, keep_whole: Mapping[str, str] | None = None, **options: Any) -> Plan:
    """Score the prunable groups with the config's criterion and choose the channels to keep (by its
    ratio, global_pruning, max_group_ratio, round_to, ignore and seed; or, with target_macs /
    target_params, until the pruned model keeps that share of MACs or parameters: selection's
    `plan_for_target`; with target_latency_ms, until it runs that fast: `latency_target`; `keep_whole`
    naming groups left whole, id -> reason). `data`: calibration batches for a data-driven criterion,
    and for `allocation="sensitivity"` without a table (`structprune.planning`).

    >>> import torch
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> x = torch.randn(2, 4)
    >>> len(select(net, x, analyze(net, x), ratio=0.25).keep["0.weight:0"])
    6
    """
    config = _model_config(model, config, options)
    scored = score_groups(model, example_inputs, graph, config, data)
    config = with_sensitivity(model, example_inputs, graph, config, data, scored)
    return plan_groups(scored, graph, config, keep_whole=keep_whole)


def compress(model: nn.Module, example_inputs: Any, *, config: CompressConfig | None = None, data: Any = None,
             plan: Plan | None = None, graph: ChannelGraph | None = None, **options: Any) -> CompressResult:
    """Analyze, score, select, rewrite and verify; with `plan`, apply that plan instead of scoring
    (what `structprune apply` runs; `graph`: the analysis the plan was made on, from `analyze` with the same
    options, so the model is not captured again). The caller's model is never modified. Options: a CompressConfig
    and/or its fields as keywords (ratio, criterion, ignore, round_to, global_pruning, ...).

    Groups whose rewrite fails verification are kept whole and the rest verified again
    (`plan.meta["blocked_by_verification"]`); `strict=True` fails instead. `recapture=False` skips
    verification's torch.export of the pruned model (a third of the time on a ResNet-50); shapes, sizes
    and masking equivalence are still checked, and MACs are counted on the verification forward.
    With `data`, BatchNorm statistics are re-estimated afterwards (and layers refit, see `recalibrate`).

    >>> import torch, models_zoo
    >>> net = models_zoo.create("resnet20").eval()
    >>> result = compress(net, torch.randn(1, 3, 32, 32), ratio=0.5)
    >>> result.report.verification["ok"], result.report.params_after < result.report.params_before
    (True, True)
    """
    config = _model_config(model, config, options)
    with without_cache(model):
        result = _compress(model, example_inputs, config, data, plan, graph)
    section = _hf_config(model, result.model, example_inputs)
    return result if section is None else CompressResult(result.model, result.plan,
                                                         result.report.with_extra(hf_config=section), result.graph)


def _model_config(model: nn.Module, config: CompressConfig | None, options: Mapping[str, Any]) -> CompressConfig:
    """`compress_config`, with the shrink rules the model's own layers need (transformers' Conv1D)."""
    config = compress_config(config, options)
    rules = with_hf_shrink_rules(model, config.shrink_rules)
    return config if rules is config.shrink_rules else dataclasses.replace(config, shrink_rules=rules)


def _compress(model: nn.Module, example_inputs: Any, config: CompressConfig, data: Any, plan: Plan | None,
              graph: ChannelGraph | None):
    if data is None or recording_of(data) is not None or plan is not None or not _refits(config):
        return _compress_on(model, example_inputs, config, data, plan, graph)
    recorded = RecordedData(data)  # what scoring computes on the dense model and the refit needs again
    try:
        return _compress_on(model, example_inputs, config, recorded, plan, graph)
    finally:
        recorded.recording.clear()


def _compress_on(model: nn.Module, example_inputs: Any, config: CompressConfig, data: Any, plan: Plan | None,
                 graph: ChannelGraph | None):
    if plan is None:
        if graph is not None:
            raise UsageError("compress(graph=...) is the analysis a given plan was made on; pass plan= with it")
        result = _choose_and_rewrite(model, example_inputs, config, data)
    else:
        graph = graph if graph is not None else _analysis_for(model, example_inputs, plan, config)
        result = verified_rewrite(model, example_inputs, plan, graph, config)
    if data is None:
        return result
    return recalibrate(model, result, example_inputs, data, recalibrate_bn=config.recalibrate_bn,
                       reconstruct=_refits(config), seed=config.seed)


def _refits(config: CompressConfig) -> bool:
    """Whether compress with data refits layers: as `config.reconstruct` says, else for data-driven criteria."""
    if config.reconstruct is not None:
        return bool(config.reconstruct)
    return bool(getattr(get_criterion(config.criterion), "needs_data", False))


def _hf_config(model: nn.Module, pruned: nn.Module, example_inputs: Any) -> dict | None:
    """A Hugging Face model's pruned copy gets a config that describes it and the user's `use_cache`
    back (structprune.hf); returns the report's `hf_config` section (None for other models)."""
    if not is_hf_model(model):
        return None
    with without_cache(pruned):
        update = update_config(model, pruned, example_inputs)
    restore_runtime_flags(model, pruned)
    return update.to_json()


def _choose_and_rewrite(model: nn.Module, example_inputs: Any, config: CompressConfig, data: Any) -> CompressResult:
    """Analyse, select, rewrite and verify. When re-capture fails inside an attention module that takes
    its width from its input, analyse again with that class tied to its input width (at most
    MAX_REPLANS classes; `plan.meta["input_width_ties"]`, re-applied from JSON)."""
    ties: tuple[str, ...] = ()
    while True:
        graph = analyze(model, example_inputs, rules=config.rules, module_rules=config.module_rules,
                        attention=config.attention, input_width_ties=ties)
        try:
            return _select_and_rewrite(model, example_inputs, graph, config, data, ties)
        except InputWidthTieNeeded as needed:
            ties += (needed.name,)


def _select_and_rewrite(model: nn.Module, example_inputs: Any, graph: ChannelGraph, config: CompressConfig,
                        data: Any, ties: tuple[str, ...]) -> CompressResult:
    """Select and rewrite once by ratio; with a budget target, until the verified model meets it
    (`selection.meet_target`, `latency_target.meet_latency_target`: groups verification keeps whole are
    fixed and the rest planned again), with the report's `target` section."""
    config = with_sensitivity(model, example_inputs, graph, config, data)  # measured once, for every round

    def choose(keep_whole: Mapping[str, str]) -> Plan:
        plan = select(model, example_inputs, graph, config=config, data=data, keep_whole=keep_whole)
        return plan.with_meta(**{TIES_KEY: list(ties)}) if ties else plan

    def rewrite(plan: Plan) -> CompressResult:
        return verified_rewrite(model, example_inputs, plan, graph, config, may_tie=len(ties) < MAX_REPLANS)

    if config.target is None:
        return rewrite(choose({}))
    meet = meet_latency_target if config.target.kind == "latency_ms" else meet_target
    result, section = meet(config.target, choose, rewrite)
    return CompressResult(result.model, result.plan, result.report.with_extra(target=section), result.graph)


def apply_plan(model: nn.Module, example_inputs: Any, plan: Plan, *, graph: ChannelGraph | None = None,
               verify: bool = True, config: CompressConfig | None = None, **options: Any) -> nn.Module:
    """Apply a saved plan (no scoring), verify the result and return the pruned model; raises
    VerificationError on failure. `compress(model, example_inputs, plan=plan)` returns the report too.
    `verify=False` returns the bare rewrite (to rebuild an architecture whose weights are loaded next).
    Options as for `compress`; those of analysis, rewrite and verification apply (recapture, strict,
    rules, module_rules, shrink_rules).

    >>> import torch
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> plan = Plan({"0.weight:0": (0, 1, 2)}, {"0.weight:0": 8})
    >>> apply_plan(net, torch.randn(2, 4), plan)[0].out_features
    3
    """
    config = _model_config(model, config, options)
    graph = graph if graph is not None else _analysis_for(model, example_inputs, plan, config)
    if not verify:
        return rewrite_model(model, graph, plan, shrink_rules=config.shrink_rules)
    with without_cache(model):
        pruned = verified_rewrite(model, example_inputs, plan, graph, config).model
    _hf_config(model, pruned, example_inputs)
    return pruned


def compress_with_plan(model: nn.Module, example_inputs: Any, plan: Plan, *, graph: ChannelGraph | None = None,
                       recapture: bool = True, strict: bool = False) -> CompressResult:
    """Deprecated: `compress(model, example_inputs, plan=plan)`, or `apply_plan` for the model alone."""
    warnings.warn("structprune.compress_with_plan is deprecated: use structprune.compress(model, example_inputs, "
                  "plan=plan)", DeprecationWarning, stacklevel=2)
    config = _model_config(model, CompressConfig(recapture=recapture, strict=strict), {})
    graph = graph if graph is not None else _analysis_for(model, example_inputs, plan, config)
    return verified_rewrite(model, example_inputs, plan, graph, config)


def plan_attention(plan: Plan) -> str:
    """The attention mode a plan was made in (plans from before the mode existed: "heads")."""
    return str(plan.meta.get("attention", "heads"))


def plan_analysis(plan: Plan) -> dict:
    """The `analyze` options a plan was made with, so that re-applying it finds the same groups."""
    return {"attention": plan_attention(plan), "input_width_ties": tuple(plan.meta.get(TIES_KEY, ()))}


def _analysis_for(model: nn.Module, example_inputs: Any, plan: Plan, config: CompressConfig) -> ChannelGraph:
    """The channel graph `plan` was made on: the config's tables, the plan's analysis options."""
    return analyze(model, example_inputs, rules=config.rules, module_rules=config.module_rules,
                   **plan_analysis(plan))


def recalibrate(model: nn.Module, result: CompressResult, example_inputs: Any, data: Any, *,
                recalibrate_bn: bool = True, reconstruct: bool = False, seed: int = 0) -> CompressResult:
    """After a verified rewrite: re-estimate BatchNorm statistics and/or refit consumer layers by least
    squares on calibration data (`compress` with `data` runs it). These change weights on purpose, so
    they run after the structural verification; the calibrated model is then checked to run and give
    finite outputs of the same shapes.

    >>> import torch
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
    >>> x = torch.randn(2, 3, 8, 8)
    >>> result = compress(net, x, ratio=0.5)
    >>> recalibrate(net, result, x, [x]).report.extra["calibration"]
    {'batchnorm_layers_recalibrated': 1}
    """
    pruned, section = copy.deepcopy(result.model), {}
    if reconstruct:
        fits = refit_layers(model, pruned, result.graph, result.plan, data, seed=seed)
        section["reconstructed_layers"] = len(fits.layers)
        if fits.blocks:
            section["tuned"] = [b.name for b in fits.blocks]
        if fits.untuned:
            section["tuning_skipped"] = fits.untuned
            warnings.warn(f"tuning was asked for and not run: {fits.untuned}", stacklevel=2)
    if recalibrate_bn:
        section["batchnorm_layers_recalibrated"] = recalibrate_batchnorm(pruned, data)
    shapes = [tuple(t.shape) for t in eval_outputs(result.model, example_inputs)]
    out = eval_outputs(pruned, example_inputs)
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
    # lazy: structprune.onnx loads onnx and onnxruntime, which `import structprune` should not pay for
    from structprune.onnx import check_parity, compare_latency, export_onnx, onnx_section

    with without_cache(model):
        exported = export_onnx(model, example_inputs, path)
        parity = check_parity(model, exported.path, example_inputs, dynamic_batch=exported.dynamic_batch,
                              dynamic_sequence=exported.dynamic_sequence)
    if not parity.ok:
        os.remove(exported.path)
        raise VerificationError(f"onnxruntime output differs from the torch model (max abs error "
                                f"{parity.max_abs_error:.3g}, max rel error {parity.max_rel_error:.3g}) "
                                f"{parity.detail}")
    latency = None
    if dense is not None:
        with tempfile.TemporaryDirectory() as tmp, without_cache(dense):
            reference = export_onnx(dense, example_inputs, os.path.join(tmp, "dense.onnx"))
            latency = compare_latency(reference.path, exported.path, example_inputs, runs=latency_runs)
    return onnx_section(exported, parity, latency)
