"""verified_rewrite: rewrite a model by a plan, verify it, and report; groups whose rewrite fails
verification are kept whole and the rest is verified again. The only way a pruned model leaves the API."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from structprune.calibrate import apply_channel_scales
from structprune.compress_config import CompressConfig
from structprune.criteria.base import SCALES_KEY
from structprune.errors import RewriteError, VerificationError, stage_errors
from structprune.graph.channel_graph import ChannelGraph
from structprune.graph.cost import count_macs, count_params, macs_of, prunable_section
from structprune.report.report import GroupRow, Report
from structprune.rewrite import rewrite_model
from structprune.rewrite.attention_attrs import attention_shape
from structprune.rewrite.shrink import DEFAULT_SHRINK_RULES
from structprune.rewrite.width_attrs import (
    AS_IS_KEY,
    enclosing_paths,
    kept_as_is,
    qualified_name,
    refreshed_attributes,
    refreshed_in,
    width_snapshot,
)
from structprune.rewrite.width_search import CHOICES_KEY, choices_for_class, chosen_widths
from structprune.selection import Plan
from structprune.verify import Verdict, verify_rewrite

MAX_REPLANS = 4  # verification rounds that may block localised groups before the failure is final
MAX_WIDTH_SEARCHES = 3  # extra rounds that retry with width attributes found by running the failing class
SEARCHED_KEY = "width_searched_classes"  # plan.meta: classes whose width attributes were searched once
TIES_KEY = "input_width_ties"  # plan.meta: attention classes whose heads x head_dim follows their input
class_name = qualified_name  # plans record the attention classes tied to their input width by this name


@dataclass(frozen=True, eq=False)
class CompressResult:
    """The pruned model, the plan that made it, the report, and the analysis it came from."""

    model: nn.Module
    plan: Plan
    report: Report
    graph: ChannelGraph


class InputWidthTieNeeded(Exception):
    """Re-capture failed in an attention module of a class not yet tied to its input width."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def verified_rewrite(model: nn.Module, example_inputs: Any, plan: Plan, graph: ChannelGraph, config: CompressConfig,
                     *, may_tie: bool = False) -> CompressResult:
    """Rewrite `model` by `plan` and verify it (`config`: recapture, strict, shrink_rules).

    When verification localises a failure to groups (masking equivalence names them, or re-capture
    fails inside a module), those groups are kept whole and the rest is rewritten and verified again,
    at most MAX_REPLANS times; `plan.meta["blocked_by_verification"]` says which and why. A model is
    never returned unverified. `config.strict` raises on the first failure instead. `may_tie`: raise
    InputWidthTieNeeded when tying a failing attention class to its input width may help."""
    for _ in range(MAX_REPLANS + MAX_WIDTH_SEARCHES + 1):
        with stage_errors(RewriteError, f"rewriting the model for {len(plan.pruned_groups())} pruned groups"):
            pruned = rewrite_model(model, graph, plan, shrink_rules=config.shrink_rules)
        with stage_errors(VerificationError, "verifying the rewrite"):
            verdict = verify_rewrite(model, pruned, example_inputs, graph, plan, recapture=config.recapture,
                                     shrink_rules=config.shrink_rules)
        searched = None if verdict.ok else _with_searched_widths(model, pruned, example_inputs, graph, plan, verdict,
                                                                  config.shrink_rules)
        if searched is not None:  # before a tie, which prunes attention less deeply
            plan = searched
            continue
        if may_tie and not verdict.ok:
            _raise_if_a_tie_may_help(model, verdict, plan)
        if not verdict.ok and _refresh_rejected(model, pruned, verdict, plan, config.shrink_rules):
            plan = plan.with_meta(**{AS_IS_KEY: sorted(kept_as_is(plan) | {_failing_class(model, verdict)})})
            continue
        if verdict.ok or config.strict or not verdict.failing_groups:
            break
        plan = plan.keeping_whole({g: f"verification_failed: {what}" for g, what in verdict.failing_groups})
    _raise_if_failed(verdict)
    with stage_errors(VerificationError, "measuring the pruned model for the report"):
        report = build_report(model, pruned, example_inputs, graph, plan, verdict, config.shrink_rules)
    if SCALES_KEY in plan.meta:  # a sampled selection (coreset_sampled) rescales kept channels
        report = report.with_extra(rescaled_tensors=apply_channel_scales(pruned, graph, plan))
    return CompressResult(pruned, plan, report, graph)


def _with_searched_widths(model: nn.Module, pruned: nn.Module, example_inputs: Any, graph: ChannelGraph, plan: Plan,
                          verdict: Verdict, shrink_rules: Mapping) -> Plan | None:
    """Verification failed inside a module whose class was not searched yet: the plan with the width
    attributes that make that class's modules run (rewrite/width_search.py), or None when none change."""
    if verdict.failing_module is None or len(plan.meta.get(SEARCHED_KEY, ())) >= MAX_WIDTH_SEARCHES:
        return None
    name = _class_to_search(model, verdict.failing_module, plan, shrink_rules)
    if name is None:
        return None
    with stage_errors(VerificationError, f"searching the width attributes of {name}"):
        found = choices_for_class(model, pruned, example_inputs, graph, plan, name, shrink_rules)
    if not found:
        return None
    return plan.with_meta(**{SEARCHED_KEY: [*plan.meta.get(SEARCHED_KEY, ()), name],
                             CHOICES_KEY: {**chosen_widths(plan), **found}})


def _class_to_search(model: nn.Module, path: str, plan: Plan, shrink_rules: Mapping) -> str | None:
    """The class of the failing module or of its nearest ancestor that has width attributes (a torch layer
    that fails was fed by the code around it: timm's SelectiveKernel splits its input by
    `self.in_channels // self.num_paths` before its convs), unless that class was searched already."""
    widths = width_snapshot(model, shrink_rules)
    name = next((name for name in enclosing_paths(path) if name in widths), None)
    found = None if name is None else qualified_name(type(model.get_submodule(name)))
    return None if found in plan.meta.get(SEARCHED_KEY, ()) else found


def _failing_class(model: nn.Module, verdict: Verdict) -> str:
    return qualified_name(type(model.get_submodule(verdict.failing_module)))


def _refresh_rejected(model: nn.Module, pruned: nn.Module, verdict: Verdict, plan: Plan,
                      shrink_rules: Mapping) -> bool:
    """Verification failed in a module whose width attributes the rewrite refreshed (and whose class
    is not yet left as it is): the next round keeps that class's attributes as they were."""
    if verdict.failing_module is None or not refreshed_in(model, pruned, verdict.failing_module, shrink_rules):
        return False
    return _failing_class(model, verdict) not in kept_as_is(plan)


def _raise_if_a_tie_may_help(model: nn.Module, verdict: Verdict, plan: Plan) -> None:
    """Signal `compress` to analyse again with the failing attention class tied to its input width: the
    failing module's own, or its nearest enclosing attention module's (a width taken from the input can
    first break a child, e.g. PVT v2's norm after a reshape by the input width)."""
    module = _enclosing_attention(model, verdict.failing_module)
    if module is not None:
        name = class_name(type(module))
        if name not in plan.meta.get(TIES_KEY, ()):
            raise InputWidthTieNeeded(name)


def _enclosing_attention(model: nn.Module, path: str | None) -> nn.Module | None:
    """The module at `path` or its nearest ancestor that is an attention module (None: neither)."""
    for name in enclosing_paths(path or ""):
        if not name:  # the root is not an enclosing attention module
            return None
        try:
            module = model.get_submodule(name)
        except AttributeError:
            return None
        if attention_shape(module) is not None:
            return module
    return None


def build_report(model, pruned, example_inputs, graph: ChannelGraph, plan: Plan, verdict: Verdict,
                 shrink_rules: Mapping = DEFAULT_SHRINK_RULES) -> Report:
    """Params and MACs before/after, one row per group (groups that verification blocked are shown
    blocked, with its reason), the verdict, the plan's settings, and the width attributes the rewrite
    refreshed outside the layers `shrink_rules` handle."""
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
    refreshed = refreshed_attributes(model, pruned, shrink_rules)
    return report.with_extra(refreshed_attributes=list(refreshed)) if refreshed else report


def _raise_if_failed(verdict: Verdict) -> None:
    if not verdict.ok:
        raise VerificationError(
            "the pruned model failed verification and is not returned: " + "; ".join(verdict.failures())
        )
