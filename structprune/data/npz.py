"""User arrays from an `.npz` file: `x` (samples, channels-first for images) and optional `y`."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from structprune.data.bundle import DataBundle, DataOptions, class_count, make_bundle, split_indices
from structprune.data.messages import one_line
from structprune.data.shapes import adapt_samples
from structprune.errors import UsageError


def load_npz_bundle(spec: str, options: DataOptions) -> DataBundle:
    """`x` as float32 (values as stored), `y` as class labels 0..K-1; without `y`, unlabelled.

    Unlabelled data has no validation split (it serves calibration only).
    """
    path = Path(spec)
    x, y = _read_arrays(path)
    samples, input_shape = adapt_samples(torch.from_numpy(x), options.input_shape, str(path))
    split = split_indices(len(samples), y, options)
    tensors = (samples,) if y is None else (samples, torch.from_numpy(y))
    return make_bundle(path.stem, TensorDataset(*tensors), split, class_count(y), input_shape, options)


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise UsageError(f"data file {path} does not exist; check the path")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UsageError(
            f"{path} is not a readable .npz file ({one_line(exc)}); save it with numpy.savez"
        ) from exc
    if "x" not in arrays:
        found = ", ".join(arrays) or "none"
        raise UsageError(f"{path} has no array 'x' (found: {found}); save it with numpy.savez(path, x=..., y=...)")
    x = _samples(arrays["x"], path)
    y = None if "y" not in arrays else _labels(arrays["y"], len(x), path)
    return x, y


def _samples(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim < 2 or len(x) == 0 or not np.issubdtype(x.dtype, np.number):
        raise UsageError(
            f"{path}: x has shape {x.shape} and dtype {x.dtype}; it must be numeric with shape "
            "(N, features), (N, H, W) or (N, C, H, W) and N > 0"
        )
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: np.ndarray, count: int, path: Path) -> np.ndarray:
    if y.shape != (count,) or not np.issubdtype(y.dtype, np.number):
        raise UsageError(
            f"{path}: y has shape {y.shape}; it must hold one class label per sample, shape ({count},)"
        )
    if np.any(y < 0) or np.any(y != np.round(y)):
        raise UsageError(f"{path}: y must hold class indices 0..K-1 (non-negative integers)")
    return y.astype(np.int64)
