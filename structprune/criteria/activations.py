"""Running per-channel activation statistics at consumer inputs, with bounded memory: one vector
per tap, summed over batches; nothing of a whole dataset is kept."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import nn

from structprune.criteria.base import GroupView, ScoringContext
from structprune.criteria.magnitude import L1
from structprune.criteria.taps import Tap, as_samples, observe_inputs, taps_by_group, to_channels
from structprune.data.batches import Batch, calibration_batches
from structprune.data.running import call_model, eval_mode, model_device

DATA_HELP = "pass data=<a DataLoader yielding (x, y) or x> (CLI: --data SPEC)"


def require_data(ctx: ScoringContext, name: str, labels: bool = False) -> None:
    """A clear error when a data-driven criterion is asked for without calibration data."""
    if ctx.data is None:
        what = "labelled calibration data" if labels else "calibration data"
        raise ValueError(f"criterion '{name}' is data-driven and needs {what}: {DATA_HELP}")


def load_batches(ctx: ScoringContext, max_samples: int | None, name: str, labels: bool = False) -> list[Batch]:
    """The calibration batches a criterion uses (inputs only are held, never activations)."""
    require_data(ctx, name, labels)
    batches = list(calibration_batches(ctx.data, max_samples, model_device(ctx.model), need_labels=labels,
                                       who=f"criterion '{name}'"))
    if not batches:
        raise ValueError(f"criterion '{name}': the calibration loader yielded no samples")
    return batches


def mean_abs_activation(model: nn.Module, taps: list[Tap], batches: Iterable[Batch]) -> dict[str, np.ndarray]:
    """Per group: mean over samples of each channel's mean |activation| over its places (spatial
    positions, tokens, flattened positions), averaged over the group's consumers."""
    sums = {id(t): torch.zeros(len(t.positions), dtype=torch.float64) for t in taps}
    counts = {id(t): 0 for t in taps}

    def see(tap: Tap, x: torch.Tensor) -> None:
        per_sample = as_samples(x.detach(), tap.channel_dim).abs().mean(dim=1)
        sums[id(tap)] += per_sample.double().sum(dim=0).cpu()
        counts[id(tap)] += per_sample.shape[0]

    with eval_mode(model), observe_inputs(model, taps, see), torch.no_grad():
        for batch in batches:
            call_model(model, batch.x)
    return _per_group(taps, {k: (v / max(counts[k], 1)).numpy() for k, v in sums.items()}, counts)


def _per_group(taps: list[Tap], per_tap: dict, counts: dict) -> dict[str, np.ndarray]:
    out = {}
    for gid, group_taps in taps_by_group(taps).items():
        seen = [t for t in group_taps if counts[id(t)] > 0]
        if seen:
            out[gid] = np.mean([to_channels(per_tap[id(t)], t.positions, t.size) for t in seen], axis=0)
    return out


def with_fallback(groups: list[GroupView], measured: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Groups no consumer input could be observed for are ranked by L1 magnitude instead."""
    missing = [g for g in groups if g.group_id not in measured]
    return {**measured, **(L1.score(missing, None) if missing else {})}
