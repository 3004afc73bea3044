"""Loss, gradients and Hessian-vector products of a model on calibration batches, computed with
torch.autograd.grad so the model's own `.grad` fields are never touched."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from structprune.data.batches import Batch
from structprune.data.running import model_logits

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; logits with extra dims (tokens) are flattened against the labels."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).long())


@contextmanager
def requiring_grad(params: Sequence[torch.Tensor]) -> Iterator[None]:
    """requires_grad=True on `params` inside the block; the previous flags are restored after."""
    saved = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, flag in zip(params, saved):
            p.requires_grad_(flag)


def batch_loss(model: nn.Module, batch: Batch, loss_fn: LossFn) -> torch.Tensor:
    """The loss of one labelled batch."""
    return loss_fn(model_logits(model, batch.x), batch.y)


def gradients(model: nn.Module, batch: Batch, params: Sequence[torch.Tensor], loss_fn: LossFn) -> list[torch.Tensor]:
    """d loss / d param for one batch (zeros where a parameter is unused)."""
    grads = torch.autograd.grad(batch_loss(model, batch, loss_fn), list(params), allow_unused=True)
    return [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]


def hessian_vector_product(model: nn.Module, batches: Sequence[Batch], params: Sequence[torch.Tensor],
                           vector: Sequence[torch.Tensor], loss_fn: LossFn) -> list[torch.Tensor]:
    """H v for the sample-weighted mean loss over `batches` (Pearlmutter: gradient of <grad, v>).
    Attention runs on the math kernel: the fused CPU kernels have no double backward."""
    with sdpa_kernel([SDPBackend.MATH]):
        return _hvp(model, batches, params, vector, loss_fn)


def _hvp(model, batches, params, vector, loss_fn) -> list[torch.Tensor]:
    total = sum(b.size for b in batches)
    out = [torch.zeros_like(p) for p in params]
    for batch in batches:
        grads = torch.autograd.grad(batch_loss(model, batch, loss_fn), list(params), create_graph=True,
                                    allow_unused=True)
        dot = sum((g * v).sum() for g, v in zip(grads, vector) if g is not None)
        if not isinstance(dot, torch.Tensor) or not dot.requires_grad:
            continue
        hv = torch.autograd.grad(dot, list(params), allow_unused=True)
        for acc, h in zip(out, hv):
            if h is not None:
                acc += h.detach() * (batch.size / total)
    return out
