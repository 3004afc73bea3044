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
    _require_npz_file(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, RuntimeError, MemoryError) as exc:
        raise UsageError(
            f"{path} is not a readable .npz file ({one_line(exc)}); save it with numpy.savez"
        ) from exc
    if "x" not in arrays:
        found = ", ".join(arrays) or "none"
        raise UsageError(f"{path} has no array 'x' (found: {found}); save it with numpy.savez(path, x=..., y=...)")
    x = _samples(arrays["x"], path)
    y = None if "y" not in arrays else _labels(arrays["y"], len(x), path)
    return x, y


def _require_npz_file(path: Path) -> None:
    try:
        exists, regular = path.exists(), path.is_file()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a NUL byte
        raise UsageError(f"cannot use {str(path)[:80]!r} as a data file ({one_line(exc)}); check the path") from exc
    if not exists:
        raise UsageError(f"data file {path} does not exist; check the path")
    if not regular:
        raise UsageError(f"data path {path} is not a file; pass an .npz file saved with numpy.savez")
    if not zipfile.is_zipfile(path):  # np.load would try it as a pickle and suggest allow_pickle
        raise UsageError(f"{path} is not a readable .npz file (not a zip archive); save it with numpy.savez")


def _samples(x: np.ndarray, path: Path) -> np.ndarray:
    real = np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)
    if x.ndim < 2 or len(x) == 0 or not real:
        raise UsageError(
            f"{path}: x has shape {x.shape} and dtype {x.dtype}; it must be real numbers with shape "
            "(N, features), (N, H, W) or (N, C, H, W) and N > 0"
        )
    samples = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise UsageError(f"{path}: x holds NaN or infinite values (or values too large for float32); clean the data")
    return samples


def _labels(y: np.ndarray, count: int, path: Path) -> np.ndarray:
    if y.shape != (count,) or not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise UsageError(
            f"{path}: y has shape {y.shape}; it must hold one class label per sample, shape ({count},)"
        )
    if not np.all(np.isfinite(y)) or np.any(y < 0) or np.any(y != np.round(y)):
        raise UsageError(f"{path}: y must hold class indices 0..K-1 (non-negative integers)")
    return y.astype(np.int64)
