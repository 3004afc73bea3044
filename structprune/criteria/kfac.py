"""Train-and-prune guided by the K-FAC spectral radius -- our own procedure, inspired by the
abstract of Ebrahimi & Klabjan, "Neuron-based Pruning of Deep Neural Networks with Better
Generalization using Kronecker Factored Curvature Approximation" (arXiv 2111.08577).

NOT a reproduction: the paper's full text was not available to us. From its abstract we take only
the ingredients: (i) prune neurons, not weights; (ii) steer the pruned model toward a flatter
solution through the spectral radius of the Hessian; (iii) approximate the Hessian with K-FAC;
(iv) train from scratch and prune during training. Everything below -- the saliency, the rule
that combines it with the spectral radius, the schedule -- is our design:

* K-FAC factors per consumer of a group (Martens & Grosse 2015): A = E[a a^T] over the group's
  channels at the consumer input (places = spatial positions/tokens pooled), G = E[g g^T] over the
  gradient of the loss w.r.t. the consumer output. The block's spectral radius is
  rho = lambda_max(A) * lambda_max(G).
* Saliency of channel c (OBD with the K-FAC block): s_c = 1/2 A_cc w_c^T G w_c, w_c = the
  consumer's weight slice for c (kernel offsets summed), summed over consumers.
* Flattening gain of removing c: d_c = rho * u_c^2, u the top eigenvector of A (first-order drop of
  lambda_max(A) when row/column c goes).
* Each prune step takes the `candidate_factor` x (number to drop) lowest-saliency channels of a
  group and drops, among them, those with the largest d_c.
* Schedule: SGD (momentum 0.9) for `epochs`; after each of the first `prune_epochs` epochs, the
  group shrinks geometrically toward its keep count; dropped channels stay zeroed at their
  consumers (masks) for the rest of training.
The model is trained IN PLACE: pass a freshly initialised model, then apply the returned selection.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from structprune.criteria.activations import require_data
from structprune.criteria.base import GroupView, ScoringContext, Selection
from structprune.criteria.gradients import LossFn, batch_loss, cross_entropy
from structprune.criteria.taps import Tap, as_samples, consumer_taps, masked_channels, taps_by_group
from structprune.data.batches import calibration_batches
from structprune.data.running import eval_mode, forward_hooks, model_device


@dataclass(frozen=True)
class KFACTrainPrune:
    """Train from scratch while pruning by K-FAC saliency and spectral-radius flattening (ours)."""

    name: str = "spectral_train"
    epochs: int = 10
    prune_epochs: int = 5
    lr: float = 0.05
    weight_decay: float = 5e-4
    kfac_batches: int = 4
    candidate_factor: float = 2.0
    loss_fn: LossFn = cross_entropy
    needs_data: bool = True
    needs_labels: bool = True
    trains_model: bool = True
    description: str = "train-and-prune with K-FAC spectral radius (ours, after Ebrahimi & Klabjan)"

    def score(self, groups: list[GroupView], ctx: ScoringContext) -> dict[str, np.ndarray]:
        """K-FAC saliency of the model as it is (no training)."""
        taps = consumer_taps(groups, ctx.model)
        return {g.group_id: kfac_stats(ctx.model, taps_by_group(taps).get(g.group_id, []), g, ctx.data,
                                       self.kfac_batches, self.loss_fn)[0] for g in groups}

    def select(self, groups: list[GroupView], ctx: ScoringContext, keep_counts: Mapping[str, int]) -> Selection:
        """Train ctx.model in place, pruning on schedule; returns the survivors and the rho history."""
        require_data(ctx, self.name, labels=True)
        taps = consumer_taps(groups, ctx.model)
        alive = {g.group_id: np.ones(g.size, dtype=bool) for g in groups}
        optimizer = torch.optim.SGD(ctx.model.parameters(), lr=self.lr, momentum=0.9,
                                    weight_decay=self.weight_decay)
        history = []
        for epoch in range(self.epochs):
            self._train_epoch(ctx, taps, alive, optimizer, epoch)
            if epoch < self.prune_epochs:
                history.append(self._prune_step(groups, ctx, taps, alive, keep_counts, epoch))
        keep = {gid: tuple(np.flatnonzero(a).tolist()) for gid, a in alive.items()}
        return Selection(keep, {"spectral_radius_history": history})

    def _train_epoch(self, ctx, taps, alive, optimizer, epoch) -> None:
        lr = 0.5 * self.lr * (1 + math.cos(math.pi * epoch / self.epochs))
        for group in optimizer.param_groups:
            group["lr"] = lr
        ctx.model.train()
        with masked_channels(ctx.model, taps, {k: ~v for k, v in alive.items()}):
            for batch in calibration_batches(ctx.data, None, model_device(ctx.model), need_labels=True):
                optimizer.zero_grad()
                batch_loss(ctx.model, batch, self.loss_fn).backward()
                optimizer.step()
        ctx.model.eval()

    def _prune_step(self, groups, ctx, taps, alive, keep_counts, epoch) -> dict[str, float]:
        radii = {}
        by_group = taps_by_group(taps)
        with masked_channels(ctx.model, taps, {k: ~v for k, v in alive.items()}):
            for g in groups:
                target = _scheduled(g.size, keep_counts.get(g.group_id, g.size), epoch + 1, self.prune_epochs)
                saliency, gain, rho = kfac_stats(ctx.model, by_group.get(g.group_id, []), g, ctx.data,
                                                 self.kfac_batches, self.loss_fn)
                alive[g.group_id] = _drop(alive[g.group_id], saliency, gain, target, self.candidate_factor)
                radii[g.group_id] = rho
        return radii


def _scheduled(size: int, keep: int, step: int, steps: int) -> int:
    """Geometric schedule from size to keep over `steps` prune steps."""
    return max(int(keep), int(round(size * (max(keep, 1) / size) ** (step / max(steps, 1)))))


def _drop(alive: np.ndarray, saliency: np.ndarray, gain: np.ndarray, target: int, factor: float) -> np.ndarray:
    live = np.flatnonzero(alive)
    n_drop = max(len(live) - max(target, 1), 0)
    if n_drop == 0:
        return alive
    candidates = live[np.argsort(saliency[live], kind="stable")[: min(len(live), math.ceil(factor * n_drop))]]
    gone = candidates[np.argsort(-gain[candidates], kind="stable")[:n_drop]]
    out = alive.copy()
    out[gone] = False
    return out


def kfac_stats(model, taps: list[Tap], group: GroupView, data, max_batches: int, loss_fn):
    """(saliency per channel, flattening gain per channel, rho summed over consumers)."""
    saliency, gain, rho = np.zeros(group.size), np.zeros(group.size), 0.0
    for tap in taps:
        a, g = _factors(model, tap, data, max_batches, loss_fn)
        if a is None:
            continue
        w = tap.outputs_first(model.get_parameter(tap.weight).detach().double())
        cols = w.movedim(1, 0).reshape(w.shape[1], w.shape[0], -1)  # (in, out, kernel)
        quad = torch.einsum("cok,op,cpk->c", cols, g, cols).numpy()
        lam_a, vec_a = torch.linalg.eigh(a)
        tap_rho = float(lam_a[-1]) * float(torch.linalg.eigvalsh(g)[-1])
        saliency += _channels(0.5 * torch.diagonal(a).numpy() * quad, tap)
        gain += _channels(tap_rho * (vec_a[:, -1] ** 2).numpy(), tap)
        rho += tap_rho
    return saliency, gain, rho


def _factors(model, tap: Tap, data, max_batches: int, loss_fn):
    """A (in x in) and G (out x out) of one consumer, averaged over places and samples; G uses
    per-sample gradients (batch size x the gradient of the batch-mean loss)."""
    a_sum, g_sum, rows = None, None, 0
    for batch in _first_batches(data, max_batches, model):
        seen: list = []

        def grab(module, args, out) -> None:
            seen.append((args[0], out))  # noqa: B023 - hooked and called within this iteration

        with eval_mode(model), forward_hooks(model, post={tap.module: grab}):
            loss = batch_loss(model, batch, loss_fn)
        if not seen or not seen[0][1].requires_grad:
            return None, None
        x, out = seen[0]
        (grad,) = torch.autograd.grad(loss, out)
        a = _places(x.detach(), tap)
        g = _places(grad.detach(), tap) * batch.size
        a_sum = a.T @ a + (0 if a_sum is None else a_sum)
        g_sum = g.T @ g + (0 if g_sum is None else g_sum)
        rows += a.shape[0]
    if a_sum is None or a_sum.shape[0] != len(tap.positions):
        return None, None
    return a_sum / rows, g_sum / rows


def _first_batches(data, n: int, model):
    for i, batch in enumerate(calibration_batches(data, None, model_device(model), need_labels=True)):
        if i >= n:
            return
        yield batch


def _places(t: torch.Tensor, tap: Tap) -> torch.Tensor:
    """(samples x places, channels) in float64."""
    return as_samples(t, tap.channel_dim).reshape(-1, t.shape[tap.channel_dim]).double()


def _channels(per_position: np.ndarray, tap: Tap) -> np.ndarray:
    out = np.zeros(tap.size)
    mask = tap.positions >= 0
    np.add.at(out, tap.positions[mask], per_position[mask])
    return out
