"""Ridge least squares for one layer, from running sums of the normal equations (bounded memory).

For a layer y = x W^T + b (`layers.weight_matrix` lays out W), rows X (with a column of ones where the
layer has a bias) and targets Y given as the change the bias should absorb (Y = target - b), the refit is

    min_{W', c}  ||Y - X W'^T - 1 c^T||^2 + lam ||W' - W||^2,   lam = ridge * trace(X^T X) / d,

so a huge ridge returns the layer as it was, and the intercept c (added to b) absorbs the mean of what
the rows no longer explain. Rows may carry weights (each row's squared error counts that much).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from structprune.calibrate.layers import set_weight_matrix, weight_matrix
from structprune.criteria.hessian import row_gram


@dataclass
class Sums:
    """Running sums of the normal equations (float64): X^T X, X^T Y, ||Y||^2 and the row count."""

    xx: torch.Tensor
    xy: torch.Tensor
    yy: float = 0.0
    rows: int = 0

    def add(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> None:
        """Add rows `x` with targets `y`, each weighted by `weight` (per row) if given."""
        if weight is not None:
            x, y = x * weight.sqrt().unsqueeze(1), y * weight.sqrt().unsqueeze(1)
        self.xx += row_gram(x)
        self.xy += x.T @ y
        self.yy += float((y.double() ** 2).sum())
        self.rows += x.shape[0]


def empty_sums(module: nn.Module, outputs: int) -> Sums:
    """Zero sums for `module`'s input features (plus the intercept column if it has a bias)."""
    width = weight_matrix(module).shape[1] + (module.bias is not None)
    device = module.weight.device
    return Sums(torch.zeros(width, width, dtype=torch.float64, device=device),
                torch.zeros(width, outputs, dtype=torch.float64, device=device))


def with_ones(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Rows `x` with the intercept column appended where `module` has a bias."""
    if module.bias is None:
        return x
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


def refit_layer(module: nn.Module, sums: Sums, ridge: float) -> tuple[float, float]:
    """Refit `module` in place from `sums` where that lowers the error; (relative error before, after)."""
    prior = weight_matrix(module).double()
    solution = _solve(sums, prior, ridge)
    before, after = _error(sums, _augment(prior, module)), _error(sums, solution)
    if after < before:
        _assign(module, solution)
    return before, min(before, after)


def _augment(weight: torch.Tensor, module: nn.Module) -> torch.Tensor:
    if module.bias is None:
        return weight
    return torch.cat([weight, torch.zeros(weight.shape[0], 1, dtype=weight.dtype, device=weight.device)], 1)


def _solve(sums: Sums, prior: torch.Tensor, ridge: float) -> torch.Tensor:
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


def _error(sums: Sums, weight: torch.Tensor) -> float:
    """Relative squared error ||Y - X w^T||^2 / ||Y||^2 from the running sums."""
    quad = float((weight @ sums.xx * weight).sum()) - 2 * float((weight * sums.xy.T).sum()) + sums.yy
    return max(quad, 0.0) / max(sums.yy, 1e-300)


def _assign(module: nn.Module, solution: torch.Tensor) -> None:
    d = weight_matrix(module).shape[1]
    set_weight_matrix(module, solution[:, :d])
    if module.bias is not None:
        module.bias.data.add_(solution[:, d].to(module.bias.dtype))
