"""Group-lasso sparsity training, then threshold pruning, then (optionally) recovery: the API of
`structprune compress --sparsity-train E --group-lasso LAMBDA [--group-norm-threshold T]`.

1. `sparsify`: train a copy of the model for E epochs on its loss + lambda * (sum over the prunable
   channel groups of each channel's coupled norm sqrt(eps + s_c)), the group-lasso penalty of
   `structprune.recover.group_lasso` (every member slice of a channel in one norm, as the plan removes it).
2. `prune_sparse`: score the trained model with the criterion `group_norm` (the same coupled norm) and
   prune the channels below a threshold: the explicit one (`GroupLassoConfig.threshold`), or the one the
   compress budget asks for (ratio, target_macs, target_params: `selection.norm_threshold`); the plan is
   rewritten and verified by `compress(plan=...)` (BatchNorm re-estimated with `data`). The report gets a
   `sparsity` section (epochs, lambda, penalty and accuracy per epoch, share of channels below the
   threshold).
3. `group_lasso_compress`: both, then `recover` when a RecoveryConfig with epochs is given.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from structprune.api import analyze, compress
from structprune.compress_config import DEFAULT_RATIO, CompressConfig, compress_config
from structprune.criteria.group_norm import GroupNorm
from structprune.errors import PlanError
from structprune.planning import score_groups
from structprune.recover import RecoveryConfig, recover
from structprune.recover.group_lasso import GroupLassoConfig, SparsityResult, train_group_lasso
from structprune.selection import Plan, meet_target
from structprune.selection.norm_threshold import plan_below_threshold, plan_for_norm_budget
from structprune.selection.targets import active_groups
from structprune.verified import CompressResult

__all__ = ["GroupLassoConfig", "SparsityResult", "group_lasso_compress", "prune_sparse", "sparsify"]


def sparsify(model: nn.Module, example_inputs: Any, train_loader, val_loader, sparsity: GroupLassoConfig, *,
             training: RecoveryConfig | None = None, config: CompressConfig | None = None,
             **options: Any) -> SparsityResult:
    """Group-lasso training of a copy of `model` over its prunable groups (those `config.ignore` leaves
    out are not penalised); `training` gives optimizer, LR, schedule and seed. `model` is not modified."""
    config = compress_config(config, options)
    graph = _analysis(model, example_inputs, config)
    groups = active_groups(graph, config, {})
    return train_group_lasso(model, graph, train_loader, val_loader, sparsity, training, groups=groups)


def prune_sparse(sparse: SparsityResult, example_inputs: Any, *, config: CompressConfig | None = None,
                 data: Any = None, **options: Any) -> CompressResult:
    """Threshold-prune a sparsity-trained model (see the module) and verify it; `config` gives the budget
    (ratio, target_macs or target_params; none beside an explicit threshold) and the usual compress
    options. Raises PlanError for a budget the threshold cannot take or cannot meet."""
    config = compress_config(config, options).with_options(criterion=GroupNorm(eps=sparse.config.eps))
    threshold = sparse.config.threshold
    if threshold is not None and (config.target is not None or not _default_ratio(config)):
        raise PlanError("an explicit group-norm threshold decides what is pruned: drop ratio / target_macs / "
                        "target_params, or drop the threshold to let the budget choose it")
    graph = _analysis(sparse.model, example_inputs, config)
    norms = score_groups(sparse.model, example_inputs, graph, config).scores

    def choose(keep_whole: Mapping[str, str]) -> Plan:
        if threshold is not None:
            return plan_below_threshold(graph, norms, threshold, ignore=config.ignore, meta=_meta(config, graph))
        return plan_for_norm_budget(graph, norms, config, keep_whole=keep_whole, meta=_meta(config, graph))

    def rewrite(plan: Plan) -> CompressResult:
        return compress(sparse.model, example_inputs, config=config, plan=plan, data=data)

    extra = {}
    if config.target is None:
        result = rewrite(choose({}))
    else:
        result, extra["target"] = meet_target(config.target, choose, rewrite)
    section = sparse.to_json(threshold=float(result.plan.meta["threshold"]))
    return CompressResult(result.model, result.plan, result.report.with_extra(sparsity=section, **extra),
                          result.graph)


def group_lasso_compress(model: nn.Module, example_inputs: Any, train_loader, val_loader,
                         sparsity: GroupLassoConfig, *, training: RecoveryConfig | None = None,
                         recovery: RecoveryConfig | None = None, config: CompressConfig | None = None,
                         data: Any = None, **options: Any) -> CompressResult:
    """`sparsify`, `prune_sparse`, then `recover` the pruned model when `recovery` has epochs (with the
    caller's dense `model` as teacher for distillation). The caller's model is never modified.

    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    >>> loader = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,))), batch_size=16)
    >>> quiet = RecoveryConfig(progress=False, measure_dead_rate=False)
    >>> result = group_lasso_compress(net, torch.randn(2, 4), loader, loader, GroupLassoConfig(epochs=2, lam=1e-2),
    ...                               training=quiet, target_params=0.5)
    >>> result.report.extra["sparsity"]["lambda"], result.report.extra["target"]["within_tolerance"]
    (0.01, True)
    """
    config = compress_config(config, options)
    sparse = sparsify(model, example_inputs, train_loader, val_loader, sparsity, training=training, config=config)
    result = prune_sparse(sparse, example_inputs, config=config, data=data)
    if recovery is None or not recovery.epochs:
        return result
    report = result.report
    recovered = recover(result.model, train_loader, val_loader, recovery, dense=model,
                        dense_macs=report.macs_before, pruned_macs=report.macs_after)
    return CompressResult(recovered.model, result.plan, report.with_extra(recovery=recovered.to_json()),
                          result.graph)


def _analysis(model: nn.Module, example_inputs: Any, config: CompressConfig):
    return analyze(model, example_inputs, rules=config.rules, module_rules=config.module_rules,
                   attention=config.attention)


def _default_ratio(config: CompressConfig) -> bool:
    """True when the config's ratio is the default one nobody asked for."""
    return isinstance(config.ratio, type(DEFAULT_RATIO))


def _meta(config: CompressConfig, graph) -> dict:
    return {"criterion": "group_norm", "seed": config.seed, "attention": graph.attention}
