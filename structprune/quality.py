"""Accuracy of a job's models and the quality gate (`--max-accuracy-drop`).

The gate never passes silently: when it is requested and accuracy cannot be measured, the job stops
with a usage error before any work; it judges both the in-memory pruned model and the published
`model.pt2` as a user loads it.
"""
from __future__ import annotations

from pathlib import Path

import torch

from structprune.artifacts import published_accuracy
from structprune.capture.deploy import SavedPt2
from structprune.data import DataBundle, accuracy_unmeasurable, evaluate_accuracy
from structprune.data.running import call_model, eval_mode, find_logits
from structprune.errors import QualityError, UsageError
from structprune.io.load import LoadedModel
from structprune.recover.embeddings import EmbeddingLoss
from structprune.recover.gate import check_quality_gate
from structprune.recover.objectives import EmbeddingObjective, output_kind


def check_gate_can_run(options, loaded: LoadedModel, bundle: DataBundle | None) -> None:
    """A requested quality gate that could not be evaluated is a usage error, found before any work."""
    if options.max_accuracy_drop is None:
        return
    reason = accuracy_unmeasurable(loaded.model, bundle.val if bundle else None)
    if reason:
        raise UsageError(f"--max-accuracy-drop cannot be checked on --data {options.data}: {reason}; pass "
                         "labelled validation data: digits, PATH.npz with x and y, an image folder, or "
                         "module:function returning (train, val) loaders of (x, y)")


def check_labels_fit(loaded: LoadedModel, bundle: DataBundle | None) -> None:
    """Labels that index past the model's (batch, classes) output are a usage error, found before
    criteria or training index out of range."""
    if bundle is None or bundle.num_classes is None:
        return
    with eval_mode(loaded.model), torch.no_grad():
        logits = find_logits(call_model(loaded.model, loaded.example_inputs))
    if isinstance(logits, torch.Tensor) and logits.dim() == 2 and bundle.num_classes > logits.shape[1]:
        raise UsageError(f"the labels of --data {bundle.name} go up to {bundle.num_classes - 1} but the model has "
                         f"{logits.shape[1]} outputs; pass data whose labels are 0..{logits.shape[1] - 1}, or "
                         "build the model with more classes (e.g. --arch-kwargs '{\"num_classes\": N}')")


def quality_gate(report, options) -> None:
    """Exit 1 (QualityError) when the pruned model, or the published .pt2, lost too much accuracy."""
    if options.max_accuracy_drop is None:
        return
    accuracy = report.extra.get("accuracy")
    if not accuracy:
        raise QualityError("the quality gate could not run: accuracy was not measured; no artifacts written")
    for key, what in (("after", "pruned model"), ("published", "published model.pt2")):
        if key not in accuracy:
            continue
        ok, message = check_quality_gate(accuracy["before"], accuracy[key], options.max_accuracy_drop)
        if not ok:
            raise QualityError(f"{message} ({what}); no artifacts written")


def with_accuracy(result, loaded: LoadedModel, bundle: DataBundle | None):
    """The report with top-1 accuracy of the dense and the pruned model on the validation data (and
    one-shot accuracy when recovery ran); `accuracy_skipped` says why when it cannot be measured."""
    if bundle is None:
        return result.report
    reason = accuracy_unmeasurable(loaded.model, bundle.val)
    if reason:
        return result.report.with_extra(accuracy_skipped=reason, **_fidelity(result, loaded, bundle))
    before = evaluate_accuracy(loaded.model, bundle.val)
    after = evaluate_accuracy(result.model, bundle.val)
    section = {"before": round(before, 3), "after": round(after, 3), "data": bundle.name}
    recovery = result.report.extra.get("recovery")
    if recovery is not None and recovery.get("val_accuracy_before") is not None:
        section["one_shot"] = round(recovery["val_accuracy_before"], 3)
    return result.report.with_extra(accuracy=section)


def _fidelity(result, loaded: LoadedModel, bundle: DataBundle) -> dict:
    """For an encoder (it returns hidden states or embeddings) on data without labels: the pruned model's
    fidelity, the mean cosine of its mean-pooled outputs to the dense model's over the validation samples
    (padding excluded; see recover.embeddings), as {"fidelity": {...}}; {} for other models."""
    if bundle.val is None or output_kind(loaded.model, bundle.val) != "embeddings":
        return {}
    measured = EmbeddingObjective(loaded.model, EmbeddingLoss()).evaluate(result.model, bundle.val)
    if measured["val_fidelity"] is None:
        return {}
    return {"fidelity": {"after": round(measured["val_fidelity"], 5), "data": bundle.name,
                         "metric": "mean cosine of mean-pooled outputs to the dense model's"}}


def with_published_accuracy(report, stage: Path, saved: SavedPt2, bundle: DataBundle | None, pruned):
    """Add the accuracy of model.pt2 as a user loads it, next to the in-memory model's."""
    accuracy = report.extra.get("accuracy")
    if not accuracy or bundle is None:
        return report
    published = published_accuracy(stage / "model.pt2", saved, bundle.val, pruned)
    return report.with_extra(accuracy={**accuracy, "published": round(published, 3),
                                       "published_artifact": "model.pt2"})
