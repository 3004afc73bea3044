"""Least-squares reconstruction: after pruning, refit each consumer layer whose input channels were
removed so that, on calibration data, the pruned layer reproduces the dense layer's output.

For a consumer with dense weight W (outputs kept by the plan) and pruned input rows X_p (from the
pruned network, so upstream errors are corrected too), the target is the dense pre-bias output
Y = X_d W^T of the dense network. We solve, by running sums over batches (bounded memory),

    min_{W', c}  ||Y - X_p W'^T - 1 c^T||^2 + lam ||W' - W_0||^2,

where W_0 is W restricted to the kept inputs (so a huge ridge returns the plain pruned layer) and
lam = ridge * trace(X_p^T X_p) / d. The intercept c is fit only if the layer has a bias; it absorbs
the mean of what was removed (bias compensation). Without a bias, a following BatchNorm's
recalibration takes up the mean shift. Layers are refit one at a time in forward order, each one
fed by the already-refit network (as in ThiNet/He et al. 2017 channel pruning, with ridge).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from structprune.calibrate.layers import input_rows, refittable, take_rows
from structprune.data.batches import calibration_batches
from structprune.data.running import call_order, eval_mode, model_device, run_until
from structprune.graph.channel_graph import ChannelGraph
from structprune.rewrite.keep import component_keep, kept_indices
from structprune.selection.plan import Plan


@dataclass(frozen=True)
class LayerFit:
    """One refit layer: its name and the relative output error before/after (on calibration data)."""

    name: str
    error_before: float
    error_after: float


@dataclass(frozen=True)
class ReconstructionReport:
    """Every refit layer, and the consumers that could not be refit (with why)."""

    layers: tuple[LayerFit, ...]
    skipped: tuple[tuple[str, str], ...]

    def to_json(self) -> dict:
        return {"layers": [vars(f) for f in self.layers], "skipped": [list(s) for s in self.skipped]}


@dataclass
class _Sums:
    """Running sums of the normal equations (float64)."""

    xx: torch.Tensor
    xy: torch.Tensor
    yy: float = 0.0
    rows: int = 0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.xx += x.T @ x
        self.xy += x.T @ y
        self.yy += float((y * y).sum())
        self.rows += x.shape[0]


def reconstruct(dense: nn.Module, pruned: nn.Module, graph: ChannelGraph, plan: Plan, loader: Iterable,
                *, ridge: float = 1e-3, max_samples: int | None = 1024, max_rows_per_batch: int = 8192,
                max_features: int = 8192, seed: int = 0) -> ReconstructionReport:
    """Refit, in place, the weights (and biases) of `pruned`'s consumer layers of every pruned group.

    >>> import torch, structprune
    >>> net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    >>> x = torch.randn(64, 6)
    >>> graph = structprune.analyze(net, x[:2])
    >>> plan = Plan({"0.weight:0": (0, 1, 2, 3)}, {"0.weight:0": 8})
    >>> small = structprune.apply_plan(net, x[:2], plan, graph=graph)
    >>> report = reconstruct(net, small, graph, plan, [(x, None)])
    >>> report.layers[0].error_after <= report.layers[0].error_before
    True
    """
    kept = kept_indices(graph, component_keep(graph, plan))
    names, skipped = _consumers(pruned, graph, plan, max_features)
    batches = list(calibration_batches(loader, max_samples, model_device(pruned), who="reconstruction"))
    if not names or not batches:
        return ReconstructionReport((), tuple(skipped))
    generator = torch.Generator().manual_seed(seed)
    fits = []
    with eval_mode(dense), eval_mode(pruned), torch.no_grad():
        for name in call_order(pruned, batches[0].x, names):
            limits = (max_rows_per_batch, generator)
            fits.append(_refit(dense, pruned, name, kept.get(f"{name}.weight", {}), batches, ridge, limits))
    return ReconstructionReport(tuple(fits), tuple(skipped))


def _consumers(pruned: nn.Module, graph: ChannelGraph, plan: Plan, max_features: int):
    """Names of the layers that read a pruned group on their input axis, and (name, why) of those
    that cannot be refit."""
    names: list[str] = []
    skipped: dict[str, str] = {}
    for gid in plan.pruned_groups():
        for member in graph.group(gid).members:
            owner, _, attr = member.fqn.rpartition(".")
            if member.role != "in" or attr != "weight" or owner in names or owner in skipped:
                continue
            why = _why_not(pruned.get_submodule(owner), member.axis, max_features)
            if why:
                skipped[owner] = why
            else:
                names.append(owner)
    return names, sorted(skipped.items())


def _why_not(module: nn.Module, axis: int, max_features: int) -> str:
    if not refittable(module):
        return f"{type(module).__name__} is not a Linear or a groups=1 zero-padded Conv2d"
    if axis != 1:
        return f"pruned axis {axis} is not the input axis"
    if module.weight[0].numel() > max_features:
        return f"{module.weight[0].numel()} input features exceed max_features={max_features}"
    return ""


def _refit(dense, pruned, name, axes, batches, ridge, limits) -> LayerFit:
    module = pruned.get_submodule(name)
    target_w = _dense_weight(dense.get_submodule(name), axes)
    sums = _accumulate(dense, pruned, name, module, target_w, batches, limits)
    prior = module.weight.detach().flatten(1).double()
    solution = _solve(sums, prior, ridge, module.bias is not None)
    before, after = _error(sums, _augment(prior, module)), _error(sums, solution)
    if after < before:
        _assign(module, solution)
    return LayerFit(name, before, min(before, after))


def _dense_weight(layer: nn.Module, axes: dict) -> torch.Tensor:
    """Dense weight rows for the kept outputs, all inputs: (kept_out, in_features * kernel)."""
    weight = layer.weight.detach().flatten(1).double()
    if 0 in axes:
        weight = weight[torch.as_tensor(axes[0], dtype=torch.long, device=weight.device)]
    return weight


def _accumulate(dense, pruned, name, module, target_w, batches, limits) -> _Sums:
    max_rows, generator = limits
    width = module.weight[0].numel() + (module.bias is not None)
    device = module.weight.device
    sums = _Sums(torch.zeros(width, width, dtype=torch.float64, device=device),
                 torch.zeros(width, target_w.shape[0], dtype=torch.float64, device=device))
    for batch in batches:
        rows_d = input_rows(module, run_until(dense, batch.x, name)).double()
        rows_p = input_rows(module, run_until(pruned, batch.x, name)).double()
        pick = take_rows(rows_p, max_rows, generator)
        x = rows_p[pick]
        if module.bias is not None:
            x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)
        sums.add(x, rows_d[pick] @ target_w.T)
    return sums


def _augment(weight: torch.Tensor, module: nn.Module) -> torch.Tensor:
    if module.bias is None:
        return weight
    return torch.cat([weight, torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)], 1)


def _solve(sums: _Sums, prior: torch.Tensor, ridge: float, has_bias: bool) -> torch.Tensor:
    """argmin ||Y - X w^T||^2 + lam ||w - prior||^2 (intercept column, if any, unpenalised)."""
    d = prior.shape[1]
    gram = sums.xx.clone()
    lam = ridge * float(torch.diagonal(gram)[:d].sum()) / max(d, 1)
    penalty = torch.zeros(gram.shape[0], dtype=gram.dtype, device=gram.device)
    penalty[:d] = lam
    rhs = sums.xy.clone()
    rhs[:d] += lam * prior.T
    gram += torch.diag(penalty)
    try:
        return torch.linalg.solve(gram, rhs).T
    except RuntimeError:  # singular even with the ridge: least-norm solution
        return torch.linalg.lstsq(gram, rhs).solution.T


def _error(sums: _Sums, weight: torch.Tensor) -> float:
    """Relative squared error ||Y - X w^T||^2 / ||Y||^2 from the running sums."""
    quad = float((weight @ sums.xx * weight).sum()) - 2 * float((weight * sums.xy.T).sum()) + sums.yy
    return max(quad, 0.0) / max(sums.yy, 1e-300)


def _assign(module: nn.Module, solution: torch.Tensor) -> None:
    d = module.weight[0].numel()
    weight = solution[:, :d].reshape(module.weight.shape).to(module.weight.dtype)
    module.weight.data.copy_(weight)
    if module.bias is not None:
        module.bias.data.add_(solution[:, d].to(module.bias.dtype))
