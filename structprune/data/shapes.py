"""Fit samples to the model's input shape: flat vectors, or images resized and channel-repeated.

A model input shape (without batch) is `(features,)` or `(channels, height, width)`. Images are
resized with bilinear interpolation (align_corners=False); a single channel is repeated to C.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from structprune.errors import UsageError


def adapt_images(images: torch.Tensor, input_shape: tuple[int, ...], source: str) -> torch.Tensor:
    """(N, C, H, W) float images -> (N, *input_shape).

    >>> adapt_images(torch.zeros(5, 1, 8, 8), (3, 16, 16), "digits").shape
    torch.Size([5, 3, 16, 16])
    """
    adapter = _IMAGE_ADAPTERS.get(len(input_shape))
    if adapter is None:
        raise UsageError(
            f"input shape {input_shape} (per sample) does not fit {source}; pass --input-shape with the batch "
            "first: 1,FEATURES or 1,C,H,W"
        )
    return adapter(images, input_shape, source)


def adapt_samples(
    samples: torch.Tensor, input_shape: tuple[int, ...] | None, source: str
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Samples shaped (N, D), (N, H, W) or (N, C, H, W) -> (samples fitted to the shape, the shape).

    Without an input shape the samples' own shape is kept.
    """
    adapter = _SAMPLE_ADAPTERS.get(samples.dim() - 1)
    if adapter is None:
        raise UsageError(
            f"{source} has samples of shape {tuple(samples.shape[1:])}; "
            "expected (N, features), (N, H, W) or channels-first (N, C, H, W)"
        )
    fitted = adapter(samples, input_shape, source)
    return fitted, tuple(fitted.shape[1:])


def _to_vectors(images: torch.Tensor, input_shape: tuple[int, ...], source: str) -> torch.Tensor:
    flat = images.flatten(1)
    if flat.shape[1] != input_shape[0]:
        raise UsageError(
            f"{source} samples have {flat.shape[1]} values but the model input is {input_shape} per sample; "
            f"pass a matching --input-shape with the batch first, e.g. 1,{flat.shape[1]}"
        )
    return flat


def _to_images(images: torch.Tensor, input_shape: tuple[int, ...], source: str) -> torch.Tensor:
    channels, height, width = input_shape
    if images.shape[1] not in (1, channels):
        raise UsageError(
            f"{source} images have {images.shape[1]} channels but the model takes {channels}; "
            "images must be channels-first (N, C, H, W) with 1 or the model's channel count"
        )
    if tuple(images.shape[2:]) != (height, width):
        images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
    return images.expand(-1, channels, -1, -1).contiguous()


def _flat_samples(samples: torch.Tensor, input_shape: tuple[int, ...] | None, source: str) -> torch.Tensor:
    if input_shape is None or tuple(input_shape) == tuple(samples.shape[1:]):
        return samples
    if math.prod(input_shape) != samples.shape[1]:
        raise UsageError(
            f"{source} samples have {samples.shape[1]} values, which do not fill the input shape "
            f"{input_shape} per sample; pass a matching --input-shape with the batch first"
        )
    return samples.reshape(len(samples), *input_shape)


def _gray_samples(samples: torch.Tensor, input_shape: tuple[int, ...] | None, source: str) -> torch.Tensor:
    return _image_samples(samples.unsqueeze(1), input_shape, source)


def _image_samples(samples: torch.Tensor, input_shape: tuple[int, ...] | None, source: str) -> torch.Tensor:
    return adapt_images(samples, input_shape or tuple(samples.shape[1:]), source)


# Model input rank -> how images are fitted to it.
_IMAGE_ADAPTERS: Mapping[int, Callable[[torch.Tensor, tuple[int, ...], str], torch.Tensor]] = {
    1: _to_vectors,
    3: _to_images,
}

# Sample rank (without batch) -> how samples are fitted to a model input shape.
_SAMPLE_ADAPTERS: Mapping[int, Callable[[torch.Tensor, tuple[int, ...] | None, str], torch.Tensor]] = {
    1: _flat_samples,
    2: _gray_samples,
    3: _image_samples,
}
