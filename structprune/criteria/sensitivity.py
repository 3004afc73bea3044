"""Empirical sensitivity of a layer's input channels (Liebenwein et al., ICLR 2020, sec. 3).

For a consumer with weight W and input activations a >= 0 (negative parts, if any, are treated as
separate non-negative inputs), the relative contribution of input channel j to output unit i at
patch position p is g_ij(x) = w_ij a_j(x) / sum_k w_ik a_k(x), computed separately for positive
weights W+ and for negative weights W- (each sum then has one sign). Channel j's sensitivity is the
largest such share over calibration points x, output units i, patch positions and kernel offsets:
s_j = max_x max_i max g_ij(x). Running maxima over batches keep memory bounded."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from structprune.criteria.taps import Tap

CHUNK_ELEMENTS = 2**22


def patch_rows(module: nn.Module, weight: torch.Tensor, x: torch.Tensor, tap: Tap) -> torch.Tensor:
    """(samples, in_features * kernel, patches) view of the consumer's input; the layout matches
    `tap.matrix(weight)`. Conv-like weights (ndim 4) unfold with the module's stride/padding/dilation."""
    if weight.ndim == 2:
        return x.reshape(x.shape[0], -1, x.shape[-1]).transpose(1, 2)
    if weight.ndim != 4:
        raise ValueError("sensitivity supports matrix and 2-D convolution weights")
    return F.unfold(x, weight.shape[2:], dilation=module.dilation, padding=module.padding, stride=module.stride)


def batch_sensitivity(weight: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Max relative contribution per input feature (in_features * kernel) over this batch; `weight` has
    its outputs first (`Tap.outputs_first`). Every (sample, patch) is a point: for point r, feature d and
    output o the share is a[r, d] * w[o, d] / z[r, o], so the max over o is taken first, once per point and
    feature (M[r, d] = max_o w[o, d] / z[r, o]), then the max over points of a[r, d] * M[r, d]."""
    w = weight.detach().flatten(1).float()
    a = rows.float()
    if (a < 0).any():
        a = torch.cat([a.clamp(min=0), (-a).clamp(min=0)], dim=0)
    points = a.transpose(1, 2).reshape(-1, a.shape[1])  # (samples x patches, features)
    best = torch.zeros(w.shape[1], dtype=torch.float32, device=w.device)
    step = max(1, CHUNK_ELEMENTS // max(points.numel(), 1))
    for part in (w.clamp(min=0), (-w).clamp(min=0)):
        z = points @ part.T  # (points, outputs)
        inv = torch.where(z > 1e-12, 1.0 / z, torch.zeros_like(z))
        most = torch.zeros_like(points)
        for lo in range(0, w.shape[0], step):
            shares = inv[:, lo:lo + step].unsqueeze(2) * part[lo:lo + step].unsqueeze(0)  # (points, o, features)
            most = torch.maximum(most, shares.amax(dim=1))
        best = torch.maximum(best, (points * most).amax(dim=0))
    return best


def per_input_channel(feature_sens: torch.Tensor, in_channels: int) -> np.ndarray:
    """Max over each input channel's kernel offsets (features are channel-major)."""
    return feature_sens.reshape(in_channels, -1).amax(dim=1).cpu().numpy()


def tap_sensitivity(model: nn.Module, tap: Tap, x: torch.Tensor) -> np.ndarray | None:
    """Per input position of `tap`: max share on this batch (None if the weight's input axis does not
    match the observed channels, e.g. grouped convolutions)."""
    weight = tap.outputs_first(model.get_parameter(tap.weight))
    if weight.shape[1] != x.shape[tap.channel_dim]:
        return None
    rows = patch_rows(model.get_submodule(tap.module), weight, x, tap)
    return per_input_channel(batch_sensitivity(weight, rows), weight.shape[1])


def output_units(model: nn.Module, tap: Tap, x: torch.Tensor) -> int:
    """eta: output units of the consumer for one input (outputs x patches)."""
    weight = tap.outputs_first(model.get_parameter(tap.weight))
    patches = patch_rows(model.get_submodule(tap.module), weight, x[:1], tap).shape[-1]
    return int(weight.shape[0] * patches)
