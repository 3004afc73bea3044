"""BatchNorm recalibration: after pruning (and reconstruction), the running mean/variance of every
BatchNorm describe the dense network's activations, not the pruned one's. Re-estimate them on
calibration batches: reset, then run forward passes in which only BatchNorm layers are in training
mode, with momentum=None (PyTorch's cumulative moving average = the exact mean over batches)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from structprune.data.batches import calibration_batches
from structprune.data.running import call_model, model_device, train_mode_only


def batchnorm_layers(model: nn.Module) -> list[_BatchNorm]:
    """BatchNorm layers that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@contextmanager
def _cumulative_momentum(layers: list[_BatchNorm]) -> Iterator[None]:
    saved = [m.momentum for m in layers]
    try:
        for m in layers:
            m.momentum = None
        yield
    finally:
        for m, momentum in zip(layers, saved):
            m.momentum = momentum


def recalibrate_batchnorm(model: nn.Module, loader: Iterable, *, max_samples: int | None = 1024) -> int:
    """Re-estimate every BatchNorm's running statistics of `model` (in place) from up to
    `max_samples` calibration samples; returns the number of layers recalibrated. Parameters,
    other buffers and the modules' train/eval flags are unchanged.

    >>> import torch
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
    >>> data = [(torch.randn(8, 1, 6, 6) * 3 + 1, torch.zeros(8))]
    >>> recalibrate_batchnorm(net, data)
    1
    >>> bool(net[1].running_mean.abs().sum() > 0)
    True
    """
    layers = batchnorm_layers(model)
    if not layers:
        return 0
    for layer in layers:
        layer.reset_running_stats()
    device = model_device(model)
    ids = {id(m) for m in layers}
    with train_mode_only(model, lambda m: id(m) in ids), _cumulative_momentum(layers), torch.no_grad():
        for batch in calibration_batches(loader, max_samples, device, who="BatchNorm recalibration"):
            call_model(model, batch.x)
    return len(layers)
