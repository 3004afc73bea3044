"""DataBundle (train/val loaders plus what the model needs to know) and the seeded split behind it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from structprune.errors import UsageError


@dataclass(frozen=True)
class DataOptions:
    """How to shape, split and batch a data set; validated by `checked`."""

    input_shape: tuple[int, ...] | None = None
    batch_size: int = 64
    seed: int = 0
    val_fraction: float = 0.2

    def checked(self) -> DataOptions:
        """Return self, or raise UsageError naming the first bad option."""
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if not 0.0 <= float(self.val_fraction) < 1.0:
            raise UsageError(f"val fraction must be in [0, 1), got {self.val_fraction!r}")
        shape = self.input_shape
        if shape is not None and (not shape or not all(isinstance(d, int) and d > 0 for d in shape)):
            raise UsageError(f"input_shape={shape!r} is not valid; give positive sizes without the batch "
                             "(on the command line, --input-shape takes the batch first: 1,3,32,32)")
        return self


@dataclass(frozen=True)
class DataBundle:
    """A data set ready for calibration, fine-tuning and accuracy.

    `train` shuffles with a generator seeded from the options' seed; `val` is None when there is
    no split (unlabelled data, val_fraction=0, or a user loader without one). `num_classes` is
    None when unknown; `input_shape` is one sample's shape, without the batch.
    """

    name: str
    train: DataLoader
    val: DataLoader | None
    num_classes: int | None
    input_shape: tuple[int, ...]


@dataclass(frozen=True)
class Split:
    """Sample indices of the train and validation parts (train in a seeded random order)."""

    train: np.ndarray
    val: np.ndarray


def split_indices(count: int, labels: np.ndarray | None, options: DataOptions) -> Split:
    """A seeded split; stratified by label when every class can appear on both sides.

    Unlabelled data (labels None) and val_fraction=0 give everything to train.
    """
    order = np.random.default_rng(options.seed).permutation(count)
    val_count = int(round(count * options.val_fraction))
    if labels is None or val_count == 0:
        return Split(order, order[:0])
    if val_count >= count:
        raise UsageError(f"cannot split {count} samples with val fraction {options.val_fraction}; lower it")
    from sklearn.model_selection import train_test_split  # deferred: 2 s of every CLI start otherwise

    stratify = labels if _can_stratify(labels, val_count, count) else None
    train, val = train_test_split(
        order, test_size=val_count, stratify=None if stratify is None else stratify[order],
        random_state=options.seed,
    )
    return Split(np.asarray(train), np.sort(val))


def holdout_split(count: int, options: DataOptions) -> Split:
    """A seeded split of unlabelled samples: `val_fraction` of them (rounded, at least one when the
    share asks for any and two or more samples exist) held out in sorted order, the rest in a seeded
    random order. Label-free recovery measures fidelity on the held-out part.

    >>> split = holdout_split(10, DataOptions(val_fraction=0.2))
    >>> len(split.train), len(split.val), sorted([*split.train, *split.val]) == list(range(10))
    (8, 2, True)
    """
    order = np.random.default_rng(options.seed).permutation(count)
    wanted = count * options.val_fraction
    val_count = min(count - 1, max(1, int(round(wanted)))) if wanted > 0 and count >= 2 else 0
    return Split(order[val_count:], np.sort(order[:val_count]))


def make_bundle(
    name: str,
    dataset: Dataset,
    split: Split,
    num_classes: int | None,
    input_shape: tuple[int, ...],
    options: DataOptions,
    collate: Callable[[list], Any] | None = None,
) -> DataBundle:
    """Wrap the split parts of `dataset` in loaders: train seeded-shuffled, val in order; `collate` makes a
    batch of samples (None: torch's default)."""
    generator = torch.Generator().manual_seed(options.seed)
    train = DataLoader(Subset(dataset, split.train.tolist()), batch_size=options.batch_size,
                       shuffle=True, generator=generator, collate_fn=collate)
    val = None
    if len(split.val):
        val = DataLoader(Subset(dataset, split.val.tolist()), batch_size=options.batch_size, collate_fn=collate)
    return DataBundle(name, train, val, num_classes, tuple(input_shape))


def class_count(labels: np.ndarray | None) -> int | None:
    """Number of classes for labels 0..K-1, or None for unlabelled data."""
    return None if labels is None else int(labels.max()) + 1


def _can_stratify(labels: np.ndarray, val_count: int, count: int) -> bool:
    _, per_class = np.unique(labels, return_counts=True)
    classes = len(per_class)
    return per_class.min() >= 2 and classes <= val_count <= count - classes
