"""What reconstruction needs to know about a consumer layer: whether it can be refit (Linear, or a
zero-padded Conv2d with groups=1), and its input as a matrix of rows = positions, columns =
(input channel, kernel offset) -- the layout of `weight.flatten(1)`."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def refittable(module: nn.Module) -> bool:
    """True for the layers whose output is `input_rows(x) @ weight.flatten(1).T (+ bias)`."""
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros" \
        and not isinstance(module.padding, str)


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(positions, in_features * kernel) matrix of the layer's input `x`."""
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                    stride=module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def take_rows(rows: torch.Tensor, limit: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of at most `limit` rows, chosen at random (same choice for dense and pruned inputs)."""
    if rows.shape[0] <= limit:
        return torch.arange(rows.shape[0], device=rows.device)
    return torch.randperm(rows.shape[0], generator=generator)[:limit].to(rows.device)
