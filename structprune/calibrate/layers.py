"""What reconstruction needs to know about a consumer layer: whether it can be refit, and its weight
and input as matrices -- the weight as (outputs, input features), the input as rows = positions,
columns = input features (per (input channel, kernel offset) of a convolution, as `weight.flatten(1)`).

A rule table: nn.Linear (weight (out, in)); transformers' `Conv1D` of GPT-2 (weight stored (in, out),
y = x W + b; matched by its name and `nf` attribute, transformers is not a dependency); a zero-padded
nn.Conv2d with groups=1 (weight (out, in, kh, kw))."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LayerForm:
    """How one kind of refittable layer lays out its weight: which weight axis holds its inputs and
    which its outputs, whether its input is channel-last (tokens x features), and the weight <-> matrix
    maps."""

    input_axis: int
    output_axis: int
    channel_last: bool
    to_matrix: Callable[[torch.Tensor], torch.Tensor]
    from_matrix: Callable[[torch.Tensor, torch.Size], torch.Tensor]


LINEAR = LayerForm(1, 0, True, lambda w: w, lambda m, shape: m.reshape(shape))
TRANSPOSED_LINEAR = LayerForm(0, 1, True, lambda w: w.T, lambda m, shape: m.T.reshape(shape))
CONV2D = LayerForm(1, 0, False, lambda w: w.flatten(1), lambda m, shape: m.reshape(shape))


def _is_transposed_linear(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.ndim == 2 \
        and getattr(module, "nf", None) == weight.shape[1]


def _is_plain_conv2d(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == 1 and module.padding_mode == "zeros" \
        and not isinstance(module.padding, str)


FORMS: tuple[tuple[Callable[[nn.Module], bool], LayerForm], ...] = (
    (lambda module: isinstance(module, nn.Linear), LINEAR),
    (_is_transposed_linear, TRANSPOSED_LINEAR),
    (_is_plain_conv2d, CONV2D),
)


def form_of(module: nn.Module) -> LayerForm | None:
    """The layer's form (its output is `input_rows(x) @ weight_matrix(layer).T (+ bias)`), or None where
    it cannot be refit."""
    return next((form for matches, form in FORMS if matches(module)), None)


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The layer's weight as (outputs, input features), detached."""
    return form_of(module).to_matrix(module.weight.detach()).flatten(1)


def set_weight_matrix(module: nn.Module, matrix: torch.Tensor) -> None:
    """Write an (outputs, input features) matrix back into the layer's weight, in its own layout."""
    module.weight.data.copy_(form_of(module).from_matrix(matrix, module.weight.shape).to(module.weight.dtype))


def channel_last(module: nn.Module) -> bool:
    """True where the layer's input and output carry features on their last axis (one row per token)."""
    form = form_of(module)
    return form is not None and form.channel_last


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(positions, input features) matrix of the layer's input `x`."""
    if channel_last(module):
        return x.reshape(-1, x.shape[-1])
    cols = F.unfold(x, module.kernel_size, dilation=module.dilation, padding=module.padding,
                    stride=module.stride)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def take_rows(rows: torch.Tensor, limit: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of at most `limit` rows, chosen at random (same choice for dense and pruned inputs)."""
    if rows.shape[0] <= limit:
        return torch.arange(rows.shape[0], device=rows.device)
    return torch.randperm(rows.shape[0], generator=generator)[:limit].to(rows.device)
