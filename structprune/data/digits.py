"""scikit-learn's bundled digits (1797 grey 8x8 images, 10 classes): no download needed."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from structprune.data.bundle import DataBundle, DataOptions, make_bundle, split_indices
from structprune.data.shapes import adapt_images

DIGITS_SHAPE = (1, 8, 8)
_DIGITS_MAX = 16.0


def load_digits_bundle(spec: str, options: DataOptions) -> DataBundle:
    """Digits split (stratified, seeded), scaled to [0, 1], normalised with train mean/std.

    Fitted to `options.input_shape`: (64,) flat, or (C, H, W) resized with the channel repeated.

    >>> bundle = load_digits_bundle("digits", DataOptions(input_shape=(64,)))
    >>> next(iter(bundle.train))[0].shape
    torch.Size([64, 64])
    """
    from sklearn.datasets import load_digits  # deferred: scikit-learn costs 2 s of every CLI start

    digits = load_digits()
    labels = digits.target.astype(np.int64)
    split = split_indices(len(labels), labels, options)
    pixels = digits.data.astype(np.float32) / _DIGITS_MAX
    pixels = _normalise(pixels, pixels[split.train])
    images = torch.from_numpy(pixels).reshape(-1, *DIGITS_SHAPE)
    input_shape = options.input_shape or DIGITS_SHAPE
    samples = adapt_images(images, input_shape, "digits")
    dataset = TensorDataset(samples, torch.from_numpy(labels))
    return make_bundle("digits", dataset, split, 10, input_shape, options)


def _normalise(pixels: np.ndarray, train_pixels: np.ndarray) -> np.ndarray:
    """One mean/std over all train pixels (a grey image has one channel)."""
    return (pixels - train_pixels.mean()) / train_pixels.std()
