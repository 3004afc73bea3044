"""The spectrum of a symmetric operator known only through products (a Hessian), and the squared
Gaussian width of a loss sublevel ellipsoid computed from it.

Notation: the spectrum is a discrete density over eigenvalues, `nodes` θ_k with `weights` τ_k summing
to 1 (every eigenvalue weighted 1/n when it is exact). The sublevel set {Δ : ½ Δᵀ H Δ ≤ ε} is an
ellipsoid with semi-axes r_k = sqrt(2ε / |θ_k|) (infinite on a flat direction, θ_k = 0). Cut by a ball
of radius R (how far pruning moves the weights), its normalised squared Gaussian width is

    w²(R) = Σ_k τ_k r_k² / (R² + r_k²)

(Zhang et al., "How Sparse Can We Prune A Deep Network"): a flat direction counts 1, a direction much
sharper than R counts ~ r_k² / R². Negative curvature counts by its magnitude, as in their code.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FLAT = 1e-12  # |θ| at or below this, relative to the largest |θ|, is a flat direction


@dataclass(frozen=True)
class Spectrum:
    """A spectral density: eigenvalues `nodes` with `weights` summing to 1; `method` says how it was
    found ("exact": every eigenvalue of the full matrix; "lanczos": stochastic Lanczos quadrature)."""

    nodes: np.ndarray
    weights: np.ndarray
    method: str


def exact_spectrum(matrix: np.ndarray) -> Spectrum:
    """Every eigenvalue of a symmetric matrix, each weighted 1/n.

    >>> exact_spectrum(np.diag([3.0, 0.0])).nodes.tolist()
    [0.0, 3.0]
    """
    nodes = np.linalg.eigvalsh(0.5 * (matrix + matrix.T))
    return Spectrum(nodes, np.full(len(nodes), 1.0 / max(len(nodes), 1)), "exact")


def lanczos_spectrum(matvec: Callable[[np.ndarray], np.ndarray], n: int, steps: int, probes: int,
                     seed: int = 0) -> Spectrum:
    """Stochastic Lanczos quadrature: `probes` Rademacher start vectors, `steps` Lanczos steps each
    (full re-orthogonalisation); the Ritz values are the nodes, the squared first components of the
    Ritz vectors their weights, averaged over probes.

    >>> spec = lanczos_spectrum(lambda v: np.arange(1.0, 5.0) * v, 4, 4, 1)
    >>> np.round(np.sort(spec.nodes), 6).tolist(), round(float(spec.weights.sum()), 6)
    ([1.0, 2.0, 3.0, 4.0], 1.0)
    """
    rng = np.random.default_rng(seed)
    nodes, weights = [], []
    for _ in range(probes):
        start = rng.choice([-1.0, 1.0], size=n) / np.sqrt(n)
        theta, tau = _lanczos_quadrature(matvec, start, min(steps, n))
        nodes.append(theta)
        weights.append(tau / probes)
    return Spectrum(np.concatenate(nodes), np.concatenate(weights), "lanczos")


def _lanczos_quadrature(matvec, start: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
    basis, alphas, betas = [start], [], []
    for _ in range(steps):
        w = matvec(basis[-1])
        alphas.append(float(w @ basis[-1]))
        q = np.stack(basis, 1)
        w = w - q @ (q.T @ w)
        w = w - q @ (q.T @ w)  # twice is enough (Kahan/Parlett)
        beta = float(np.linalg.norm(w))
        if len(alphas) == steps or beta <= 1e-10 * max(1.0, abs(alphas[-1])):
            break
        betas.append(beta)
        basis.append(w / beta)
    tri = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    theta, vectors = np.linalg.eigh(tri)
    return theta, vectors[0] ** 2


def squared_width(spectrum: Spectrum, tolerance: float, radius: np.ndarray) -> np.ndarray:
    """w²(R) for each radius in `radius` (see the module docstring), in [0, 1].

    >>> flat_and_sharp = Spectrum(np.array([0.0, 1e6]), np.array([0.5, 0.5]), "exact")
    >>> np.round(squared_width(flat_and_sharp, 0.01, np.array([0.0, 1.0])), 4).tolist()
    [1.0, 0.5]
    """
    magnitude = np.abs(spectrum.nodes)
    flat = magnitude <= FLAT * max(float(magnitude.max(initial=0.0)), 1e-300)
    r2 = np.where(flat, np.inf, 2.0 * tolerance / np.where(flat, 1.0, magnitude))
    radius2 = np.asarray(radius, dtype=np.float64)[:, None] ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(np.isinf(r2), 1.0, r2 / (radius2 + r2))
    share = np.where(np.isnan(share), 1.0, share)  # R = 0 and r = 0: nothing moved, nothing lost
    return share @ spectrum.weights
