"""The recovery step of a job: one-shot compress + recover, or iterative prune/recover cycles.

Iterative plans apply in sequence; they are composed into one plan on the dense model's groups, so
`structprune apply` can rebuild the final architecture from the original one.
"""
from __future__ import annotations

import dataclasses

from structprune.api import CompressResult
from structprune.data import evaluate_accuracy
from structprune.errors import UsageError
from structprune.graph.cost import count_macs, count_params
from structprune.selection import Plan


def recover_result(result: CompressResult, loaded, options, bundle) -> CompressResult:
    """Fine-tune / distill / retrain the pruned model when epochs and data are given."""
    if not options.recovery.epochs or bundle is None:
        return result
    from structprune.recover import recover

    report = result.report
    recovered = recover(result.model, bundle.train, bundle.val, options.recovery, dense=loaded.model,
                        dense_macs=report.macs_before, pruned_macs=report.macs_after)
    return CompressResult(recovered.model, result.plan, report.with_extra(recovery=recovered.to_json()),
                          result.graph)


def iterative_result(loaded, options, bundle) -> CompressResult:
    """`--iterative N`: N cycles, each pruning 1-(1-ratio)^(1/N) of what remains, then recovering."""
    from structprune.iterative import iterative_prune

    if bundle is None or not options.recovery.epochs:
        raise UsageError("--iterative needs --data and --finetune-epochs (recovery runs after every cycle)")
    fraction = 1.0 - (1.0 - options.compress.ratio) ** (1.0 / options.iterative)
    dense = loaded.model if options.recovery.method in ("auto", "distill") else None
    outcome = iterative_prune(loaded.model, loaded.example_inputs, bundle.train, bundle.val,
                              cycles=options.iterative, fraction=fraction, criterion=options.compress.criterion,
                              config=options.recovery, dense=dense, ap_share=options.ap,
                              compress_kwargs={"config": options.compress})
    last = outcome.cycles[-1].report
    report = dataclasses.replace(last, params_before=count_params(loaded.model),
                                 macs_before=count_macs(loaded.model, loaded.example_inputs))
    section = {**outcome.to_json(), "fraction_per_cycle": round(fraction, 6),
               "accuracy_per_cycle": [c.recovery.final_val_accuracy for c in outcome.cycles]}
    return CompressResult(outcome.model, compose_plans(outcome.plans), report.with_extra(iterative=section),
                          None)


def compose_plans(plans) -> Plan:
    """One plan on the first plan's groups equivalent to applying `plans` in order.

    >>> a = Plan({"g": (0, 2, 3)}, {"g": 4}); b = Plan({"g": (1, 2)}, {"g": 3})
    >>> compose_plans([a, b]).keep["g"]
    (2, 3)
    """
    first, *rest = plans
    keep = {g: list(k) for g, k in first.keep.items()}
    for plan in rest:
        for gid, kept in plan.keep.items():
            if gid not in keep or len(keep[gid]) != plan.sizes[gid]:
                raise ValueError(f"cannot compose plans: group '{gid}' does not line up between cycles")
            keep[gid] = [keep[gid][i] for i in kept]
    meta = {**first.meta, "composed_from_cycles": len(plans)}
    return Plan(keep, first.sizes, meta)


def one_shot_accuracy(model, bundle) -> float | None:
    return evaluate_accuracy(model, bundle.val) if bundle is not None and bundle.val is not None else None
