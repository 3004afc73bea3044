"""Top-1 accuracy on a loader, and the first training samples of a bundle (deterministic)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from structprune.data.batches import calibration_batches, split_batch, to_device
from structprune.data.bundle import DataBundle
from structprune.data.running import call_model, eval_mode, find_logits, model_device, model_logits
from structprune.errors import UsageError


def evaluate_accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy in percent, in eval mode without gradients; the training flag is restored.

    A GraphModule from a `.pt2` archive cannot switch modes and runs in the mode it was exported in.

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> data = DataLoader(TensorDataset(torch.eye(4), torch.arange(4)), batch_size=2)
    >>> evaluate_accuracy(torch.nn.Identity(), data)
    100.0
    """
    with eval_mode(model), torch.no_grad():
        correct, total = _count_correct(model, loader)
    if total == 0:
        raise UsageError("the evaluation loader yielded no samples; check the data spec and split")
    return 100.0 * correct / total


def accuracy_unmeasurable(model: nn.Module, loader: DataLoader | None) -> str:
    """Why top-1 accuracy cannot be measured on `loader` ("" when it can): no validation loader, no
    labels, labels that are not class indices, or a model whose output is not (batch, classes)
    logits covering the labels. The class count comes from the model's output.

    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> data = DataLoader(TensorDataset(torch.randn(4, 3), torch.tensor([0, 1, 2, 5])), batch_size=4)
    >>> accuracy_unmeasurable(torch.nn.Linear(3, 4), data)
    'labels go up to 5 but the model has 4 outputs (classes)'
    """
    if loader is None:
        return "the data has no validation split"
    batch = next(iter(loader), None)
    if batch is None:
        return "the validation loader yields no batches"
    inputs, labels = split_batch(batch)
    if labels is None:
        return "the validation batches carry no labels (give (x, y) tuples or a dict with a 'labels' key)"
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex():
        return f"the labels are not class indices (dtype {labels.dtype}, shape {tuple(labels.shape)})"
    with eval_mode(model), torch.no_grad():
        output = call_model(model, to_device(inputs, model_device(model)))
    logits = find_logits(output)
    if logits is None or logits.dim() != 2:
        shape = tuple(logits.shape) if logits is not None else type(output).__name__
        return f"the model's output is {shape}, not (batch, classes) logits"
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        return f"labels go up to {int(labels.max())} but the model has {logits.shape[1]} outputs (classes)"
    return ""


def first_training_inputs(bundle: DataBundle, n_samples: int) -> list[Any]:
    """Inputs of the first `n_samples` training samples (dataset order, not shuffled), in batches, where
    they are (no device move): `calibration_batches` over the unshuffled training set.

    Fewer samples come back when the training set is smaller.
    """
    if n_samples < 1:
        raise UsageError(f"calibration needs at least 1 sample, got {n_samples}")
    return [batch.x for batch in calibration_batches(_in_order(bundle.train), n_samples)]


def _count_correct(model: nn.Module, loader: DataLoader) -> tuple[int, int]:
    device = model_device(model)
    correct = total = 0
    for batch in loader:
        inputs, labels = split_batch(batch)
        if labels is None:
            raise UsageError("accuracy needs labelled data, but the batches carry no labels")
        predicted = model_logits(model, to_device(inputs, device)).argmax(dim=-1)
        correct += int((predicted.cpu() == labels.cpu()).sum())
        total += len(labels)
    return correct, total


def _in_order(loader: DataLoader) -> DataLoader:
    """The same samples and batch size, without shuffling (a map-style dataset is re-wrapped)."""
    if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
        return loader
    return DataLoader(loader.dataset, batch_size=loader.batch_size, shuffle=False,
                      collate_fn=loader.collate_fn, num_workers=loader.num_workers)
