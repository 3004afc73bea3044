"""Sensitivity analysis: what the model loses when one channel group alone is pruned at a few ratios.

For each prunable group g and ratio r, the group keeps its highest-scored size - removed_at(size, r)
channels (the criterion's scores, as compress would choose them), every other group stays whole, the model
is rewritten (`rewrite_model`, unverified: this only measures) and run on fixed batches. The value is
- "accuracy": top-1 accuracy in percent, where the batches carry class labels and the model returns
  (batch, classes) logits;
- "fidelity": the mean over samples of the cosine between the pruned and the dense model's outputs (every
  output tensor with the batch first, flattened per sample and concatenated); 1.0 is the dense model.
"auto" picks accuracy where it can be measured, else fidelity. A candidate that fails to rewrite or run
gets NaN (the allocation never prunes that far). The result is a `selection.SensitivityTable`; `compress`
allocates by one with `allocation="sensitivity"` (`selection.sensitivity_allocation`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from structprune.data.batches import Batch, calibration_batches
from structprune.data.running import call_model, eval_mode, find_logits, flat_outputs, model_device
from structprune.errors import PlanError, StructpruneError
from structprune.rewrite import rewrite_model
from structprune.rewrite.shrink import DEFAULT_SHRINK_RULES
from structprune.selection import Plan, SensitivityTable, is_ignored
from structprune.selection.select import output_fqns, removed_at

DEFAULT_RATIOS = (0.25, 0.5, 0.75)
MAX_SAMPLES = 256  # samples every candidate is run on
METRIC_CHOICES = ("auto", "accuracy", "fidelity")


def measure_sensitivity(model: nn.Module, example_inputs: Any, graph, scores: Mapping[str, np.ndarray], data: Iterable,
                        *, ratios: Sequence[float] = DEFAULT_RATIOS, metric: str = "auto",
                        max_samples: int = MAX_SAMPLES, ignore: Sequence[str] = (),
                        shrink_rules: Mapping = DEFAULT_SHRINK_RULES,
                        progress: Callable[[str], None] | None = None) -> SensitivityTable:
    """The SensitivityTable of `model` on the first `max_samples` samples of `data` (batches as
    `data.batches` reads them), for the prunable groups of `graph` that `ignore` leaves, ranked by `scores`.
    `progress(group_id)` is called before each group.

    >>> import torch, structprune
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    >>> x = torch.randn(16, 4)
    >>> graph = structprune.analyze(net, x)
    >>> table = measure_sensitivity(net, x, graph, {"0.weight:0": np.arange(8.0)}, [x], ratios=(0.5,))
    >>> table.metric, table.groups, len(table.values[0])
    ('fidelity', ('0.weight:0',), 1)
    """
    ratios = check_ratios(ratios)
    batches = list(calibration_batches(data, max_samples, model_device(model), who="sensitivity analysis"))
    if not batches:
        raise PlanError("sensitivity analysis got no batches from its data; pass data with at least one sample")
    dense = _run(model, batches)
    metric = resolve_metric(metric, batches, dense)
    score = METRICS[metric]
    groups = [g for g in graph.groups if g.prunable and not is_ignored(output_fqns(g), ignore)]
    values = []
    for g in groups:
        if progress is not None:
            progress(g.id)
        values.append(tuple(_pruned_value(model, graph, g, scores[g.id], r, batches, dense, score, shrink_rules)
                            for r in ratios))
    return SensitivityTable(metric, float(score(dense, batches, dense)), ratios, tuple(g.id for g in groups),
                            tuple(g.size for g in groups), tuple(values))


def check_ratios(ratios: Sequence[float]) -> tuple[float, ...]:
    """The ratios, sorted; PlanError unless there is at least one and each is in (0, 1), without repeats."""
    values = tuple(sorted(float(r) for r in ratios))
    if not values or any(not 0.0 < r < 1.0 for r in values) or len(set(values)) != len(values):
        raise PlanError(f"sensitivity ratios must be distinct fractions in (0, 1), e.g. 0.25,0.5,0.75; got {ratios!r}")
    return values


def _pruned_value(model, graph, group, scores, ratio: float, batches, dense, score, shrink_rules) -> float:
    """The metric with `group` alone pruned at `ratio` (NaN when that model cannot be built or run)."""
    n_keep = group.size - removed_at(group.size, ratio)
    kept = tuple(sorted(np.argsort(-np.asarray(scores), kind="stable")[:n_keep].tolist()))
    plan = Plan({**{g.id: tuple(range(g.size)) for g in graph.groups}, group.id: kept},
                {g.id: g.size for g in graph.groups})
    try:
        pruned = rewrite_model(model, graph, plan, shrink_rules=shrink_rules)
        return float(score(_run(pruned, batches), batches, dense))
    except (StructpruneError, RuntimeError):  # a model that cannot be built or run has no value
        return float("nan")


def _run(model: nn.Module, batches: list[Batch]) -> list[Any]:
    with eval_mode(model), torch.no_grad():
        return [call_model(model, batch.x) for batch in batches]


# ---- metrics: (outputs, batches, dense outputs) -> value ---------------------------------------------------

def _accuracy(outputs: list, batches: list[Batch], dense: list) -> float:
    correct = sum(int((find_logits(out).argmax(dim=1) == b.y).sum()) for out, b in zip(outputs, batches))
    return 100.0 * correct / sum(b.size for b in batches)


def _fidelity(outputs: list, batches: list[Batch], dense: list) -> float:
    cosines = [torch.nn.functional.cosine_similarity(_per_sample(out, b.size), _per_sample(ref, b.size), dim=1,
                                                     eps=1e-12) for out, ref, b in zip(outputs, dense, batches)]
    return float(torch.cat(cosines).mean())


def _per_sample(output: Any, size: int) -> torch.Tensor:
    """Every output tensor with the batch first, flattened per sample and concatenated."""
    parts = [t.reshape(size, -1).double() for t in flat_outputs(output) if t.dim() > 0 and t.shape[0] == size]
    if not parts:
        raise PlanError("sensitivity by fidelity needs an output tensor with the batch first; the model returned none")
    return torch.cat(parts, dim=1)


METRICS: dict[str, Callable[[list, list, list], float]] = {"accuracy": _accuracy, "fidelity": _fidelity}


def resolve_metric(metric: str, batches: list[Batch], dense: list) -> str:
    """"auto" -> accuracy where it is measurable (`accuracy_problem`), else fidelity; an explicit
    "accuracy" that is not measurable is a PlanError saying why."""
    if metric not in METRIC_CHOICES:
        raise PlanError(f"sensitivity metric must be one of {', '.join(METRIC_CHOICES)}, got {metric!r}")
    problem = accuracy_problem(batches, dense) if metric != "fidelity" else ""
    if metric == "accuracy" and problem:
        raise PlanError(f"sensitivity by accuracy cannot be measured: {problem}; use --metric fidelity")
    return "fidelity" if metric == "fidelity" or problem else "accuracy"


def accuracy_problem(batches: list[Batch], dense: list) -> str:
    """Why top-1 accuracy cannot be read from these batches and outputs ("" when it can)."""
    for batch, out in zip(batches, dense):
        logits = find_logits(out)
        if batch.y is None:
            return "the batches carry no labels"
        if logits is None or logits.dim() != 2:
            return "the model's output is not (batch, classes) logits"
        if batch.y.dim() != 1 or batch.y.is_floating_point() or int(batch.y.max()) >= logits.shape[1]:
            return "the labels are not class indices of the model's outputs"
    return ""
