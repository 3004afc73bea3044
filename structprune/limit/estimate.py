"""estimate_pruning_limit: the channel fraction beyond which pruning breaks a model, predicted from its
weight magnitudes and the flatness of its loss, before any pruning is tried.

After Zhang et al., "How Sparse Can We Prune A Deep Network: A Fundamental Limit Perspective" (the
pruning-ratio threshold from the statistical dimension / Gaussian width of a loss sublevel set; their
code is QiaozheZhang/Global-One-shot-Pruning). Their recipe, for unstructured weights w in R^D:
the tolerance ε is the standard deviation of the per-batch training loss; the loss sublevel set
{Δ : ½ Δᵀ H Δ ≤ ε} is an ellipsoid given by the Hessian's spectrum (Lanczos); magnitude pruning of
a fraction p moves the weights by R(p) = ‖w − w_pruned(p)‖; the predicted threshold is where the
normalised squared Gaussian width w²(R(p)) of the ellipsoid cut by a ball of radius R(p) meets p.

What we adapted for structured (channel-group) pruning:
- Coordinates are channels, not weights. Every prunable channel c (of the ChannelGraph, on all members
  of its coupled group) gets a multiplicative gate g_c; α_c = m_c g_c, where m_c is the L2 norm of every
  parameter entry c owns. Removing c moves α_c from m_c to 0, so D = the number of prunable channels,
  R(p)² is the sum of m_c² over the removed channels, and the Hessian is the gate Hessian rescaled,
  H_α = diag(1/m) H_g diag(1/m) (a zero-magnitude channel is a flat direction). Entries owned by two
  channels (W[o, i] of a conv between two groups) move with both gates.
- The order is global magnitude pruning of channels (smallest m_c first); each group's largest channel
  is never removed (a group keeps one channel), so the fraction stops below 1.
- The predicted limit is the last fraction p on the grid {j / D} with w²(R(p)) >= p: the edge of the
  feasible side of the phase transition (their code takes the p nearest to the crossing).
- The spectrum is exact (D Hessian-vector products, each eigenvalue weighted 1/D) when D <= `steps`,
  else stochastic Lanczos quadrature with `probes` start vectors. The Hessian is taken in eval mode on
  the first `hessian_samples` samples of `data`; ε over every batch of `data`. We do not add their
  "important eigenvalue" count for large networks, nor train with an L1 penalty first.
- The limit is also expressed as the MACs and parameter reduction of that magnitude plan, costed on the
  channel graph (selection.PlanCost), so it can be set beside a sweep's knee in MACs.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from structprune.api import analyze
from structprune.data.batches import labelled_batch
from structprune.data.running import eval_mode, logits_of, normalize_inputs
from structprune.errors import UsageError
from structprune.graph.channel_graph import ChannelGraph
from structprune.limit.gates import ChannelGates, channel_gates
from structprune.limit.spectrum import Spectrum, exact_spectrum, lanczos_spectrum, squared_width
from structprune.selection import Plan, PlanCost

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class PruningLimit:
    """The predicted limit: `channel_fraction` of the prunable channels removable by magnitude before the
    loss leaves its ε-sublevel set, and the MACs / parameter reduction (dense / pruned) of that plan.
    `fractions`, `radii`, `widths`: the curve p, R(p), w²(R(p)) it was read from; `tolerance` is ε."""

    channel_fraction: float
    macs_reduction: float
    params_reduction: float
    tolerance: float
    channels: int
    method: str
    fractions: tuple[float, ...]
    radii: tuple[float, ...]
    widths: tuple[float, ...]

    def to_json(self) -> dict:
        return {"channel_fraction": self.channel_fraction, "macs_reduction": self.macs_reduction,
                "params_reduction": self.params_reduction, "tolerance": self.tolerance, "channels": self.channels,
                "method": self.method, "curve": {"fraction": list(self.fractions), "radius": list(self.radii),
                                                 "squared_width": list(self.widths)}}


def estimate_pruning_limit(model: nn.Module, example_inputs: Any, data: Iterable, *, graph: ChannelGraph | None = None,
                           loss: Loss | None = None, tolerance: float | None = None, steps: int = 40,
                           probes: int = 1, hessian_samples: int = 512, seed: int = 0) -> PruningLimit:
    """Predict the pruning limit of `model` from labelled batches `data` (see the module docstring).

    `loss(logits, labels)` defaults to cross-entropy; `tolerance` (ε) to the std of its per-batch values.

    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> with torch.no_grad():                 # hidden units 0 and 1 carry the signal, 2 and 3 nothing
    ...     for p in net.parameters():
    ...         _ = p.zero_()
    ...     net[0].weight[:2] = 4 * torch.eye(2)
    ...     net[2].weight[:, :2] = 4 * torch.eye(2)
    >>> x = torch.randn(512, 2, generator=torch.Generator().manual_seed(0))
    >>> data = DataLoader(TensorDataset(x, net(x).argmax(1)), batch_size=128)
    >>> estimate_pruning_limit(net, x[:1], data).channel_fraction   # 2 of 4 channels can go
    0.5
    """
    graph = graph if graph is not None else analyze(model, example_inputs)
    gates = channel_gates(graph, model)
    if gates.n == 0:
        raise UsageError("the model has no prunable channel groups, so it has no pruning limit to estimate; "
                         "see `structprune inspect` for why its groups are blocked")
    batches = [labelled_batch(b) for b in data]
    if not batches:
        raise UsageError("estimating the pruning limit needs labelled batches, but the data yielded none")
    loss = loss or nn.functional.cross_entropy
    with eval_mode(model):
        eps = batch_loss_std(model, batches, loss) if tolerance is None else float(tolerance)
        spectrum = channel_spectrum(model, gates, _first_samples(batches, hessian_samples), loss, steps, probes, seed)
    return _limit(graph, gates, spectrum, eps)


def batch_loss_std(model: nn.Module, batches: list, loss: Loss) -> float:
    """ε of Zhang et al.: the standard deviation of the per-batch mean loss of the dense model."""
    with torch.no_grad():
        values = [float(loss(_logits(model, {}, x), y)) for x, y in batches]
    return float(np.std(values))


def channel_spectrum(model: nn.Module, gates: ChannelGates, batches: list, loss: Loss, steps: int, probes: int,
                     seed: int) -> Spectrum:
    """The spectrum of H_α = diag(1/m) H_g diag(1/m), the loss Hessian in channel-magnitude coordinates."""
    hvp = _gate_hvp(model, gates, batches, loss)
    inverse = np.where(gates.magnitude > 0, 1.0 / np.maximum(gates.magnitude, 1e-300), 0.0)

    def matvec(v: np.ndarray) -> np.ndarray:
        return inverse * hvp(inverse * v)

    if gates.n <= steps:
        return exact_spectrum(np.stack([matvec(e) for e in np.eye(gates.n)], 1))
    return lanczos_spectrum(matvec, gates.n, steps, probes, seed)


def _gate_hvp(model: nn.Module, gates: ChannelGates, batches: list, loss: Loss) -> Callable[[np.ndarray], np.ndarray]:
    """v -> H_g v, the Hessian of the mean loss over `batches` w.r.t. the gates at g = 1; each batch's
    gradient graph is built once and kept for every product."""
    total = sum(len(y) for _, y in batches)
    graphs = []
    for x, y in batches:
        g = torch.ones(gates.n, requires_grad=True)
        value = loss(_logits(model, gates.parameters(model, g), x), y) * (len(y) / total)
        graphs.append((g, torch.autograd.grad(value, g, create_graph=True)[0]))

    def hvp(v: np.ndarray) -> np.ndarray:
        vector = torch.as_tensor(v, dtype=torch.float32)
        out = np.zeros(gates.n)
        for g, grad in graphs:
            if grad.requires_grad:  # a loss that does not depend on the gates has no curvature
                out += torch.autograd.grad(grad, g, vector, retain_graph=True)[0].double().numpy()
        return out

    return hvp


def _limit(graph: ChannelGraph, gates: ChannelGates, spectrum: Spectrum, eps: float) -> PruningLimit:
    order = gates.removal_order()
    radii = np.sqrt(np.concatenate([[0.0], np.cumsum(gates.magnitude[order] ** 2)]))
    fractions = np.arange(len(radii)) / gates.n
    widths = squared_width(spectrum, eps, radii)
    feasible = np.flatnonzero(widths >= fractions - 1e-12)
    removed = int(feasible.max())
    macs, params = _reductions(graph, gates, order[:removed])
    return PruningLimit(float(fractions[removed]), macs, params, eps, gates.n, spectrum.method,
                        tuple(fractions.tolist()), tuple(radii.tolist()), tuple(widths.tolist()))


def _reductions(graph: ChannelGraph, gates: ChannelGates, removed: np.ndarray) -> tuple[float, float]:
    """Dense / pruned MACs and parameters when the gates `removed` are pruned (costed on the graph)."""
    dropped = set(removed.tolist())
    keep = {gid: tuple(c for c in range(size) if offset + c not in dropped) for gid, offset, size in gates.groups}
    cost = PlanCost(graph)
    macs, params = cost.of_plan(Plan(keep, {g.id: g.size for g in graph.groups}))
    return cost.dense[0] / max(macs, 1), cost.dense[1] / max(params, 1)


def _first_samples(batches: list, samples: int) -> list:
    taken, count = [], 0
    for x, y in batches:
        if count >= samples:
            break
        taken.append((x, y))
        count += len(y)
    return taken


def _logits(model: nn.Module, params: dict, inputs: Any) -> torch.Tensor:
    args, kwargs = normalize_inputs(inputs)
    return logits_of(functional_call(model, params, args, kwargs))
