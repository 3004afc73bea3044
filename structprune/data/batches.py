"""What a batch looks like to structprune, and the one place that splits, sizes, moves and trims one.

Accepted batches: `(inputs, labels)`, `(inputs,)`, a bare tensor, or a dict of keyword inputs
with an optional "labels" entry (the Hugging Face convention; "label" and "y" are accepted too).
Inputs are a tensor, a tuple/list of positional inputs or a dict of keyword inputs, nested as deep
as the model wants; every tensor carries the batch on dim 0. Scoring, calibration, recovery and
evaluation all read batches through `split_batch` and `calibration_batches`; `data.running` calls
the model on what they return. A dict's "attention_mask" (samples, tokens) marks padding, which token
statistics leave out (`token_mask`).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from structprune.errors import UsageError

LABEL_KEYS = ("labels", "label", "y")  # dict entries that hold labels, first found wins
MASK_KEY = "attention_mask"  # the dict entry that marks real tokens (1) and padding (0), as in Hugging Face


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch read for calibration or scoring: model inputs `x` (tensor, tuple or dict) and labels
    `y` (or None)."""

    x: Any
    y: torch.Tensor | None

    @property
    def size(self) -> int:
        return batch_size_of(self.x)


def split_batch(batch: Any) -> tuple[Any, torch.Tensor | None]:
    """(inputs, labels or None) of one batch.

    >>> split_batch((torch.zeros(2, 3), torch.tensor([0, 1])))[1]
    tensor([0, 1])
    """
    if isinstance(batch, Mapping):
        inputs = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        return inputs, next((batch[k] for k in LABEL_KEYS if k in batch), None)
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def labelled_batch(batch: Any) -> tuple[Any, torch.Tensor]:
    """(inputs, targets) of a batch that must carry labels (recovery); a batch without labels is an
    error that says what was expected."""
    inputs, targets = split_batch(batch)
    if targets is None:
        raise TypeError("recovery needs loaders that yield (inputs, targets) pairs or dicts with a 'labels' key; "
                        f"got a {type(batch).__name__} without labels")
    return inputs, targets


def batch_size_of(inputs: Any) -> int:
    """Number of samples in a batch of inputs: the leading size of its first tensor.

    >>> batch_size_of({"ids": torch.zeros(3, 5), "mask": torch.ones(3, 5)})
    3
    """
    first = next((t for t in pytree.tree_leaves(inputs) if isinstance(t, torch.Tensor)), None)
    if first is None:
        raise ValueError(f"a batch of inputs holds no tensor (got a {type(inputs).__name__}); "
                         "yield tensors, tuples of tensors or dicts of tensors")
    return int(first.shape[0])


def token_mask(inputs: Any) -> torch.Tensor | None:
    """Which tokens of a batch of keyword inputs are real: its `attention_mask` (samples, tokens) as
    bool, True for a real token, False for padding; None for other inputs or a mask of another rank.
    Statistics over tokens (scores, Hessians, refits) leave the padding out.

    >>> token_mask({"input_ids": torch.zeros(2, 3), "attention_mask": torch.tensor([[1, 1, 0], [1, 1, 1]])}).sum()
    tensor(5)
    """
    mask = inputs.get(MASK_KEY) if isinstance(inputs, Mapping) else None
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        return None
    return mask != 0


def to_device(value: Any, device: torch.device) -> Any:
    """The same (nested) value with every tensor on `device`; other leaves are left as they are."""
    return pytree.tree_map_only(torch.Tensor, lambda t: t.to(device), value)


def take_first(value: Any, count: int) -> Any:
    """The same (nested) value with only the first `count` samples of every tensor."""
    return pytree.tree_map_only(torch.Tensor, lambda t: t[:count], value)


def same_values(a: Any, b: Any) -> bool:
    """Equal structure and leaves: tensors of the same shape, dtype and device, equal by value.

    >>> same_values({"ids": torch.arange(3)}, {"ids": torch.arange(3)}), same_values(torch.zeros(2), torch.ones(2))
    (True, False)
    """
    leaves_a, spec_a = pytree.tree_flatten(a)
    leaves_b, spec_b = pytree.tree_flatten(b)
    if spec_a != spec_b:
        return False
    return all(_same_leaf(u, v) for u, v in zip(leaves_a, leaves_b))


def _same_leaf(u: Any, v: Any) -> bool:
    if isinstance(u, torch.Tensor) or isinstance(v, torch.Tensor):
        return isinstance(u, torch.Tensor) and isinstance(v, torch.Tensor) and u.shape == v.shape \
            and u.dtype == v.dtype and u.device == v.device and bool(torch.equal(u, v))
    return u is v or u == v


def calibration_batches(loader: Iterable | None, max_samples: int | None, device: torch.device | None = None,
                        *, need_labels: bool = False, who: str = "calibration") -> Iterator[Batch]:
    """Batches of `loader` in its order, moved to `device` (None: left where they are), until
    `max_samples` samples were read (None: all; the last batch is trimmed). `who` names the caller
    in errors.

    >>> loader = [(torch.zeros(4, 2), torch.arange(4))] * 2
    >>> [b.size for b in calibration_batches(loader, 6)]
    [4, 2]
    """
    if loader is None:
        raise UsageError(f"{who} needs calibration data: pass data=<DataLoader yielding (x, y)>")
    seen = 0
    for raw in loader:
        batch = _read_batch(raw, device, need_labels, who)
        if max_samples is not None and seen + batch.size > max_samples:
            batch = Batch(take_first(batch.x, max_samples - seen), take_first(batch.y, max_samples - seen))
        if batch.size == 0:
            return
        seen += batch.size
        yield batch
        if max_samples is not None and seen >= max_samples:
            return


def _read_batch(raw: Any, device: torch.device | None, need_labels: bool, who: str) -> Batch:
    x, y = split_batch(raw)
    if need_labels and y is None:
        raise UsageError(f"{who} needs labelled data: batches of (x, y) pairs, or dicts with a 'labels' key; these "
                         "batches carry no labels (label-free criteria: obs, dropnet, coreset, ispasp)")
    return Batch(x, y) if device is None else Batch(to_device(x, device), to_device(y, device))
