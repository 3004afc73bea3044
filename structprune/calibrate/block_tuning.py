"""Block reconstruction by gradient: after its layers were refit by least squares, a pruned block's
parameters are tuned so that, on the calibration inputs it receives in the pruned network, it returns
what the dense block returns on the dense network's -- the block-wise objective of BRECQ (Li et al.,
"BRECQ: Pushing the Limit of Post-Training Quantization by Block Reconstruction", ICLR 2021), used for
pruning as the blockwise reconstruction of BESA (Xu et al., ICLR 2024) and FLAP's successors. No
labels and no end-to-end training: each block sees only its own inputs and the dense block's outputs.

Error: the mean over real positions (padded tokens left out) of the squared output difference over
the channels, divided by that position's variance in the dense output, so a position counts in units
of its own spread (the stream weighting of `reconstruct`); with `weigh="samples"` each sample's
positions share one weight (`taps.token_shares`). Tuning is kept only where it lowers this error on
the calibration data; otherwise the block is restored as it was.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from structprune.criteria.taps import real_shares, token_places
from structprune.data.batches import Batch, token_mask
from structprune.data.running import Call, call_model, first_tensor


@dataclass(frozen=True)
class BlockTune:
    """One tuned block: its name, gradient steps, and the relative output error before/after."""

    name: str
    steps: int
    error_before: float
    error_after: float


@dataclass(frozen=True)
class TuneSettings:
    """Adam with learning rate `lr` for `epochs` passes over the calibration batches, seeded; rows
    weighted as `weigh` says (`taps.WEIGHINGS`); `ridge`: of the least-squares refit that follows a
    unit's tuning (`unit_tuning`)."""

    epochs: float
    lr: float
    seed: int = 0
    weigh: str = "tokens"
    ridge: float = 1e-3


def owns_parameters(model: nn.Module, block: str) -> bool:
    """True if no parameter of module `block` is also used outside it (tied weights are not tuned)."""
    inside = {id(p) for p in model.get_submodule(block).parameters()}
    outside = {id(p) for name, p in model.named_parameters(remove_duplicate=False)
               if not name.startswith(block + ".")}
    return bool(inside) and not inside & outside


def stream_channels(dense: nn.Module, kept: dict, block: str, dense_width: int, width: int) -> torch.Tensor | None:
    """Which of a block's `dense_width` output channels the pruned block's `width` keep, read from the
    norms inside it (one-dimensional weights of the stream's width, as a pre-norm block's input norm or
    a post-norm block's output norm): their kept positions, if they all agree; else None."""
    found = []
    for fqn, axes in kept.items():
        if fqn.startswith(block + ".") and 0 in axes and len(axes[0]) == width:
            tensor = dense.get_parameter(fqn) if fqn.endswith(("weight", "bias")) else None
            if tensor is not None and tensor.dim() == 1 and tensor.shape[0] == dense_width:
                found.append(torch.as_tensor(axes[0], dtype=torch.long))
    if not found or any(not torch.equal(found[0], f) for f in found[1:]):
        return None
    return found[0]


def tune_block(name: str, block: nn.Module, calls: list[Call], targets: list[torch.Tensor], batches: list[Batch],
               settings: TuneSettings) -> tuple[BlockTune, list[torch.Tensor]]:
    """Tune `block` in place on (`calls`, `targets`); its outputs on `calls` afterwards, and the record."""
    with torch.no_grad():
        before = [first_tensor(call_model(block, c)) for c in calls]
    error_before = relative_error(before, targets, batches, settings.weigh)
    saved = {k: v.detach().clone() for k, v in block.state_dict().items()}
    steps = _train(block, calls, targets, batches, settings)
    with torch.no_grad():
        after = [first_tensor(call_model(block, c)) for c in calls]
    error_after = relative_error(after, targets, batches, settings.weigh)
    if not error_after < error_before:
        block.load_state_dict(saved)
        return BlockTune(name, steps, error_before, error_before), before
    return BlockTune(name, steps, error_before, error_after), after


def relative_error(outputs: list[torch.Tensor], targets: list[torch.Tensor], batches: list[Batch],
                   weigh: str = "tokens") -> float:
    """Weighted mean over real positions of the squared difference per channel over the target's variance."""
    total, weights = 0.0, 0.0
    for out, target, batch in zip(outputs, targets, batches):
        errors, shares = _row_errors(out, target, batch, weigh)
        total, weights = total + float((errors * shares).sum()), weights + float(shares.sum())
    return total / max(weights, 1e-30)


def _row_errors(out: torch.Tensor, target: torch.Tensor, batch: Batch,
                weigh: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per real position: the squared difference over the target's variance, and the position's weight."""
    rows_out, rows_target = out.reshape(-1, out.shape[-1]), target.reshape(-1, target.shape[-1])
    mask = token_mask(batch.x)
    valid = token_places(target, -1, mask)
    if valid is not None:
        keep = valid.reshape(-1).to(rows_out.device)
        rows_out, rows_target = rows_out[keep], rows_target[keep]
    shares = real_shares(target, -1, mask) if weigh == "samples" else None
    weights = torch.ones(rows_out.shape[0], device=rows_out.device) if shares is None else shares.to(rows_out.device)
    scale = rows_target.var(dim=1).clamp(min=1e-12)
    return ((rows_out - rows_target) ** 2).mean(dim=1) / scale, weights


def _train(block: nn.Module, calls: list[Call], targets: list[torch.Tensor], batches: list[Batch],
           settings: TuneSettings) -> int:
    params = [p for p in block.parameters() if p.is_floating_point()]
    generator = torch.Generator().manual_seed(settings.seed)
    steps = max(1, round(settings.epochs * len(calls)))
    order: list[int] = []

    def loss(_: int) -> torch.Tensor:
        if not order:
            order.extend(torch.randperm(len(calls), generator=generator).tolist())
        i = order.pop()
        errors, weights = _row_errors(first_tensor(call_model(block, calls[i])), targets[i], batches[i], settings.weigh)
        return (errors * weights).sum() / weights.sum().clamp(min=1e-30)

    adam_steps(params, loss, steps, settings.lr)
    return steps


def adam_steps(params: list[torch.nn.Parameter], loss: Callable[[int], torch.Tensor], steps: int, lr: float,
               held: list[torch.nn.Parameter] = ()) -> None:
    """`steps` Adam steps on `params`, the loss of step i being `loss(i)`; the parameters are trainable
    only meanwhile and keep no gradient afterwards. `held`: parameters the loss also uses that stay as
    they are; no gradient is computed for them (nor left on them)."""
    flags = [p.requires_grad for p in params]
    held_flags = [p.requires_grad for p in held]
    try:
        with torch.enable_grad():
            for p in held:
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            optimizer = torch.optim.Adam(params, lr=lr)
            for step in range(steps):
                value = loss(step)
                optimizer.zero_grad(set_to_none=True)
                value.backward()
                optimizer.step()
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
            p.grad = None
        for p, flag in zip(held, held_flags):
            p.requires_grad_(flag)
