"""Second moments of consumer inputs for least-squares methods (OBS pruning, refits).

A consumer whose output is `rows(x) @ W^T + b` (a matrix weight on the channel-last input, or a 2-D
convolution on its unfolded patches) has the layer-wise squared error ||rows @ dW^T||^2 = tr(dW H dW^T)
with H = sum over calibration rows of [row, 1]^T [row, 1] -- the Hessian of OBS (Hassibi & Stork 1993)
as SparseGPT/ZipLM use it, with a constant column when the layer has a bias (its intercept). Rows
are positions: samples x tokens (padded tokens of an `attention_mask` left out) or samples x patches.
That the consumer computes exactly this is checked on real input, not assumed from its type.
Where the consumer's output is added to a stream that a module normalises per position (a post-norm
transformer's LayerNorm; see `readers.py`), a row counts in units of that position's spread: it is
weighted by 1 / var(stream) over the channels, as the refits of `calibrate.reconstruct` weight it, so
the channels chosen are those the refit can best do without.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from structprune.criteria.readers import Reader, spread_weights
from structprune.criteria.taps import Padding, Tap, as_samples, multiply, observe_inputs
from structprune.data.batches import Batch
from structprune.data.recording import Recording
from structprune.data.running import eval_mode, forward_hooks


@dataclass(eq=False)
class ConsumerGram:
    """One consumer's weight as a matrix (out, columns [+ intercept]) in float64, the channel of each
    column (`columns`, -1: not the group's, the intercept is -1 too), and H summed over `rows` rows;
    `inverses` keeps what users derived from H (dampened inverses), by key."""

    tap: Tap
    weight: torch.Tensor
    columns: np.ndarray
    has_bias: bool
    gram: torch.Tensor
    rows: int = 0
    inverses: dict = field(default_factory=dict, repr=False)


GRAM_BLOCK = 256  # columns per block when a Gram is computed over its upper triangle (`row_gram`)


def row_gram(rows: torch.Tensor) -> torch.Tensor:
    """rows^T rows, computed block by block over its upper triangle and mirrored: about half the products
    of one matrix product (1.5-1.9x faster for 769 and 1537 columns on this project's 2 CPU cores).

    >>> x = torch.randn(50, 600)
    >>> torch.allclose(row_gram(x), x.T @ x, atol=1e-3)
    True
    """
    width = rows.shape[1]
    blocks = -(-width // GRAM_BLOCK)
    if blocks < 2:
        return rows.T @ rows
    cuts = [round(i * width / blocks) for i in range(blocks + 1)]
    gram = rows.new_empty(width, width)
    for start, stop in zip(cuts, cuts[1:]):
        part = rows[:, start:stop].T @ rows[:, start:]
        gram[start:stop, start:] = part
        gram[start:, start:stop] = part.T
    return gram


def matrix_rows(module: nn.Module, weight: torch.Tensor, x: torch.Tensor, tap: Tap) -> torch.Tensor | None:
    """(rows, columns) of the consumer's input, one column per input feature (per (input channel,
    kernel offset) of a convolution, as `weight.flatten(1)` lays them out); None: not supported."""
    if weight.ndim == 2 and tap.channel_dim == -1:
        return as_samples(x, -1).reshape(-1, x.shape[-1])
    if weight.ndim == 4 and getattr(module, "groups", 1) == 1 and not isinstance(getattr(module, "padding", 0), str):
        cols = F.unfold(x, weight.shape[2:], dilation=module.dilation, padding=module.padding, stride=module.stride)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return None


def row_mask(weight: torch.Tensor, x: torch.Tensor, tap: Tap, padding: Padding) -> torch.Tensor | None:
    """Which rows of `matrix_rows` are real tokens (None: all)."""
    valid = padding.places(tap, x) if weight.ndim == 2 else None
    return None if valid is None else valid.reshape(-1)


def consumer_matrix(module: nn.Module, weight: torch.Tensor, x: torch.Tensor, tap: Tap) -> torch.Tensor | None:
    """The (outputs, columns) matrix M (`tap.matrix`) if module(x) == rows(x) @ M^T + b on (a slice of)
    real input, else None."""
    x = x[:2]
    rows = matrix_rows(module, weight, x, tap)
    if rows is None:
        return None
    bias = getattr(module, "bias", None)
    try:
        with torch.no_grad():
            out = module(x)
    except (RuntimeError, TypeError, ValueError, IndexError):
        return None
    if not isinstance(out, torch.Tensor):
        return None
    out_rows = out.reshape(-1, out.shape[-1]) if weight.ndim == 2 else out.flatten(2).transpose(1, 2)
    matrix = tap.matrix(weight)
    return matrix if matrix.shape[1] == rows.shape[1] and _matches(out_rows, rows @ matrix.T, bias) else None


def _matches(out_rows: torch.Tensor, product: torch.Tensor, bias) -> bool:
    want = product + (bias if isinstance(bias, torch.Tensor) and bias.shape == product.shape[-1:] else 0)
    if out_rows.numel() != want.numel():
        return False
    scale = float(want.abs().max()) + 1e-12
    return float((out_rows.reshape(want.shape) - want).abs().max()) <= 1e-3 * scale


def column_channels(matrix: torch.Tensor, tap: Tap) -> np.ndarray:
    """Group channel of each column of a consumer matrix (input-channel major, kernel offsets inner)."""
    return np.repeat(np.asarray(tap.positions), matrix.shape[1] // len(tap.positions))


def consumer_grams(model: nn.Module, taps: list[Tap], batches: Iterable[Batch], max_features: int = 8192,
                   readers: Mapping[str, Reader] | None = None, weigh: str = "tokens",
                   recording: Recording | None = None) -> dict[int, ConsumerGram]:
    """H per usable tap (keyed by id(tap)), accumulated over the batches in one forward pass each;
    `readers` (by consumer module): the rows of a consumer whose reader normalises are weighted by
    1 / var of the reader's input at their position; `weigh="samples"`: each sample's real tokens
    share a weight of 1 (see `taps.token_shares`). A `recording` keeps the readers' inputs (the dense
    stream a later refit reads; `data.recording`)."""
    grams: dict[int, ConsumerGram | None] = {}
    padding = Padding()
    checking: list[Tap] = []  # the check calls the consumer, whose hook must not observe that call
    normalising = {name: r.name for name, r in (readers or {}).items() if r.normalises}
    waiting: dict[str, list] = {}  # reader -> (gram, consumer, input, real rows, shares) seen since its last call

    def see(tap: Tap, x: torch.Tensor) -> None:
        if checking:
            return
        if id(tap) not in grams:
            checking.append(tap)
            try:
                grams[id(tap)] = _start(model, tap, x.detach(), max_features)
            finally:
                checking.pop()
        state = grams[id(tap)]
        if state is None:
            return
        module = model.get_submodule(tap.module)
        weight = module.get_parameter(tap.weight.rsplit(".", 1)[1])
        shares = padding.shares(tap, x) if weigh == "samples" and weight.ndim == 2 else None
        seen = (state, module, x.detach(), row_mask(weight, x, tap, padding), shares)
        if tap.module in normalising:
            waiting.setdefault(normalising[tap.module], []).append(seen)
        else:
            _add_rows(*seen)

    def at_reader(name: str):
        def hook(_, args):
            if recording is not None and args and isinstance(args[0], torch.Tensor):
                recording.keep(name, args[0])
            for state, module, x, valid, shares in waiting.pop(name, []):
                _add_rows(state, module, x, valid, shares, _spread_weights(x, args[0] if args else None))
        return hook

    recorded = {r.name for r in (readers or {}).values()} if recording is not None else set()
    watched = set(normalising.values()) | recorded
    with eval_mode(model), observe_inputs(model, taps, see), torch.no_grad(), \
            forward_hooks(model, pre={name: at_reader(name) for name in watched}):
        for batch in batches:
            if recording is not None:
                recording.start(model, batch.x)
            padding.run(model, batch.x)
            if recording is not None:
                recording.finish()
            for pending in waiting.values():  # a reader not reached on this batch: rows not spread-weighted
                for seen in pending:
                    _add_rows(*seen)
            waiting.clear()
    return {key: g for key, g in grams.items() if g is not None and g.rows > 0}


def _spread_weights(x: torch.Tensor, z) -> torch.Tensor | None:
    """1 / var over the channels of the stream `z` per position of the (channel-last) input `x`, or None
    where they do not line up."""
    if not isinstance(z, torch.Tensor) or z.ndim != x.ndim or z.shape[:-1] != x.shape[:-1]:
        return None
    return spread_weights(z).reshape(-1)


def _start(model: nn.Module, tap: Tap, x: torch.Tensor, max_features: int) -> ConsumerGram | None:
    module = model.get_submodule(tap.module)
    weight = model.get_parameter(tap.weight).detach()
    found = consumer_matrix(module, weight, x, tap) if x.shape[tap.channel_dim] <= max_features else None
    if found is None or found.shape[1] > max_features:
        return None
    bias = getattr(module, "bias", None)
    has_bias = isinstance(bias, torch.Tensor)
    matrix = found.double()
    columns = column_channels(found, tap)
    if has_bias:
        matrix = torch.cat([matrix, bias.detach().double().reshape(-1, 1)], dim=1)
        columns = np.append(columns, -1)
    width = matrix.shape[1]
    return ConsumerGram(tap, matrix, columns, has_bias, torch.zeros(width, width, dtype=torch.float64,
                                                                   device=weight.device))


def _add_rows(state: ConsumerGram, module: nn.Module, x: torch.Tensor, valid: torch.Tensor | None,
              shares: torch.Tensor | None = None, spread: torch.Tensor | None = None) -> None:
    """Add x's rows to H: only the `valid` ones (real tokens; None: all), each weighted by its sample
    `shares` and its `spread` weight (per position of x) where given."""
    weight = module.get_parameter(state.tap.weight.rsplit(".", 1)[1])
    rows = matrix_rows(module, weight, x, state.tap)
    row_weights = multiply(spread, None if shares is None else shares.reshape(-1))
    if row_weights is not None and (weight.ndim != 2 or row_weights.shape[0] != rows.shape[0]):
        row_weights = None
    if valid is not None:
        rows = rows[valid.to(rows.device)]
        row_weights = None if row_weights is None else row_weights[valid.to(row_weights.device)]
    rows = rows.float()  # products in float32 (as SparseGPT's H), summed over batches in float64
    w = torch.ones(rows.shape[0], 1, device=rows.device) if row_weights is None else \
        row_weights.to(rows.device).unsqueeze(1)
    data = rows.shape[1]
    state.gram[:data, :data] += row_gram(rows if row_weights is None else rows * w.sqrt()).double()
    if state.has_bias:
        total = (rows * w).sum(dim=0).double()
        state.gram[:data, data] += total
        state.gram[data, :data] += total
        state.gram[data, data] += float(w.sum())
    state.rows += rows.shape[0]

