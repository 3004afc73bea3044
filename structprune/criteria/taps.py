"""Where a group's channels can be observed in a forward pass, without knowing op types.

A group's signal is the input of its consumer layers (members with role 'in'): the module owning
the weight receives, on its first positional input, exactly the post-norm, post-activation map that
flows along the group's channels. Its channel axis is dim 1 for conv-like weights (ndim >= 3) and
the last dim for matrix weights (ndim 2); a tap whose input does not have `len(positions)` entries
on that axis (grouped convolutions, fused projections) is not used. Hooks live only inside the
context managers below.

Padding: a batch of keyword inputs with an `attention_mask` (samples, tokens) marks padded tokens;
`Padding` runs the model on a batch and tells an observer which places of a tap's input are real
tokens, so statistics leave the padding out (inputs without a mask, or taps whose places do not line
up with the tokens, count every place, as before), and how much each place weighs where every sample
should count once (`WEIGHINGS`: "tokens", every real token once, or "samples")."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from structprune.criteria.base import GroupView
from structprune.data.batches import token_mask
from structprune.data.running import call_model, forward_hooks

WEIGHINGS = ("tokens", "samples")  # how rows count in least-squares statistics: see `token_shares`


@dataclass(frozen=True, eq=False)
class Tap:
    """The input of consumer `module`, seen as group `group_id`'s channels: input position p along
    `channel_dim` is channel `positions[p]` (-1: another group's); `weight_axis` is the axis of the
    consumer's weight that reads them (1, or 0 for a 2-D weight stored (in, out))."""

    group_id: str
    module: str
    weight: str
    channel_dim: int
    positions: np.ndarray
    size: int
    weight_axis: int = 1

    def fits(self, x: torch.Tensor) -> bool:
        return x.ndim >= 2 and x.shape[self.channel_dim] == len(self.positions)

    def outputs_first(self, weight: torch.Tensor) -> torch.Tensor:
        """The consumer's weight with outputs on axis 0: as it is, or the transpose of a 2-D weight stored
        (in, out) (transformers' Conv1D in GPT-2)."""
        return weight.T if weight.ndim == 2 and self.weight_axis == 0 else weight

    def matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """The consumer's weight as (outputs, input features): `outputs_first(weight).flatten(1)`."""
        return self.outputs_first(weight).flatten(1)


def consumer_taps(groups: list[GroupView], model: nn.Module) -> list[Tap]:
    """One tap per (group, consumer module) pair."""
    params = dict(model.named_parameters(remove_duplicate=False))  # a tied LM head is a consumer too
    taps, seen = [], set()
    for group in groups:
        for member in group.members:
            weight = params.get(member.fqn)
            if member.role != "in" or weight is None or weight.ndim < 2 or "." not in member.fqn:
                continue
            module = member.fqn.rsplit(".", 1)[0]
            if (group.group_id, module) not in seen:
                seen.add((group.group_id, module))
                taps.append(Tap(group.group_id, module, member.fqn, 1 if weight.ndim >= 3 else -1,
                                np.asarray(member.positions), group.size, member.axis))
    return taps


def taps_by_group(taps: list[Tap]) -> dict[str, list[Tap]]:
    """Taps grouped by group id, in tap order."""
    out: dict[str, list[Tap]] = {}
    for tap in taps:
        out.setdefault(tap.group_id, []).append(tap)
    return out


def as_samples(x: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """(samples, places, positions): the channel axis last, everything but the batch in between."""
    moved = x.movedim(channel_dim, -1)
    return moved.reshape(moved.shape[0], -1, moved.shape[-1])


def token_places(x: torch.Tensor, channel_dim: int, mask: torch.Tensor | None) -> torch.Tensor | None:
    """(samples, places) bool laid out like `as_samples(x, channel_dim)`: True where the place is a
    real token of `mask` (samples, tokens). The tokens line up when the channel-last input is
    (samples, ..., tokens, channels) or (samples * tokens, channels); otherwise (or without a mask) None.

    >>> token_places(torch.zeros(2, 3, 4), -1, torch.tensor([[True, True, False], [True, True, True]])).sum()
    tensor(5)
    """
    if mask is None:
        return None
    return _per_place(x, channel_dim, mask.to(device=x.device, dtype=torch.bool))


def token_shares(x: torch.Tensor, channel_dim: int, mask: torch.Tensor | None) -> torch.Tensor | None:
    """(samples, places) float laid out like `token_places`: each sample's real tokens share a weight
    of 1 (1 / its real token count; 0 on padding), so every sample counts once whatever its length;
    None where `token_places` is None.

    >>> token_shares(torch.zeros(2, 3, 4), -1, torch.tensor([[True, True, False], [True, True, True]]))[0]
    tensor([0.5000, 0.5000, 0.0000])
    """
    if mask is None:
        return None
    real = mask.to(device=x.device, dtype=torch.float32)
    return _per_place(x, channel_dim, real / real.sum(dim=1, keepdim=True).clamp(min=1.0))


def real_shares(x: torch.Tensor, channel_dim: int, mask: torch.Tensor | None) -> torch.Tensor | None:
    """`token_shares` of the real places only, flattened in `token_places` order (the rows a statistic
    keeps), or None where `token_places` is None.

    >>> real_shares(torch.zeros(2, 3, 4), -1, torch.tensor([[True, True, False], [True, True, True]])).tolist()
    [0.5, 0.5, 0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
    """
    shares, valid = token_shares(x, channel_dim, mask), token_places(x, channel_dim, mask)
    return None if shares is None else shares.reshape(-1)[valid.reshape(-1)]


def checked_weighing(weigh: str, who: str) -> str:
    """`weigh` if it is one of WEIGHINGS, else a ValueError naming `who` (the setting's owner)."""
    if weigh not in WEIGHINGS:
        raise ValueError(f"{who} weigh must be one of {', '.join(WEIGHINGS)}, got {weigh!r}")
    return weigh


def multiply(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """The product of two row weightings, where either may be None (every row once).

    >>> multiply(None, torch.tensor([2.0])), multiply(torch.tensor([3.0]), torch.tensor([2.0]))
    (tensor([2.]), tensor([6.]))
    """
    if a is None or b is None:
        return b if a is None else a
    return a.to(b.device) * b


def _per_place(x: torch.Tensor, channel_dim: int, per_token: torch.Tensor) -> torch.Tensor | None:
    """`per_token` (samples, tokens) laid out like `as_samples(x, channel_dim)`'s places (see `token_places`)."""
    moved = x.movedim(channel_dim, -1)
    samples, tokens = per_token.shape
    if moved.ndim >= 3 and moved.shape[0] == samples and moved.shape[-2] == tokens:
        lead = per_token.reshape(samples, *([1] * (moved.ndim - 3)), tokens)
        return lead.expand(moved.shape[:-1]).reshape(samples, -1)
    if moved.ndim == 2 and moved.shape[0] == samples * tokens:
        return per_token.reshape(-1, 1)
    return None


@dataclass
class Padding:
    """The padding of the batch being run: `run(model, x)` calls the model and keeps x's token mask
    while it runs, so observers (hooks) can ask which places of a tap's input are real tokens."""

    mask: torch.Tensor | None = None

    def run(self, model: nn.Module, x) -> object:
        self.mask = token_mask(x)
        try:
            return call_model(model, x)
        finally:
            self.mask = None

    def places(self, tap: Tap, x: torch.Tensor) -> torch.Tensor | None:
        """(samples, places) bool of the real tokens in `x` (as `as_samples` lays it out), or None."""
        return token_places(x, tap.channel_dim, self.mask)

    def shares(self, tap: Tap, x: torch.Tensor) -> torch.Tensor | None:
        """(samples, places) weights of `x`'s places when each sample counts once (`token_shares`), or None."""
        return token_shares(x, tap.channel_dim, self.mask)

    def zeroed(self, tap: Tap, x: torch.Tensor) -> torch.Tensor:
        """`x` with its padded places set to zero (`x` itself where no padding applies)."""
        valid = self.places(tap, x)
        if valid is None or bool(valid.all()):
            return x
        moved = x.movedim(tap.channel_dim, -1)
        return (moved * valid.reshape(moved.shape[:-1]).unsqueeze(-1).to(x.dtype)).movedim(-1, tap.channel_dim)


def to_channels(per_position: np.ndarray, positions: np.ndarray, size: int, how: str = "mean") -> np.ndarray:
    """Per-position values -> per-channel values ('sum' or 'mean' over a channel's positions)."""
    mask = positions >= 0
    total = np.bincount(positions[mask], weights=np.asarray(per_position, dtype=np.float64)[mask], minlength=size)
    if how == "sum":
        return total
    count = np.bincount(positions[mask], minlength=size)
    return total / np.maximum(count, 1)


@contextmanager
def observe_inputs(model: nn.Module, taps: list[Tap], see: Callable[[Tap, torch.Tensor], None]) -> Iterator[None]:
    """Inside the block, every forward pass calls `see(tap, x)` with each fitting tap's input."""
    by_module: dict[str, list[Tap]] = {}
    for tap in taps:
        by_module.setdefault(tap.module, []).append(tap)

    def hook_for(module_taps: list[Tap]):
        def hook(module: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                for tap in module_taps:
                    if tap.fits(args[0]):
                        see(tap, args[0])
        return hook

    with forward_hooks(model, pre={m: hook_for(t) for m, t in by_module.items()}):
        yield


@contextmanager
def masked_channels(model: nn.Module, taps: list[Tap], dropped: Mapping[str, np.ndarray]) -> Iterator[None]:
    """Inside the block, channels flagged in `dropped[group_id]` (bool per channel) are zeroed at
    every consumer input: for linear consumers this is exactly the pruned network."""
    masks: dict[str, list[tuple[Tap, torch.Tensor]]] = {}
    for tap in taps:
        if tap.group_id in dropped and np.any(dropped[tap.group_id]):
            gone = np.asarray(dropped[tap.group_id], dtype=bool)
            keep = np.where(tap.positions >= 0, ~gone[np.maximum(tap.positions, 0)], True)
            masks.setdefault(tap.module, []).append((tap, torch.as_tensor(keep)))

    def hook_for(module_masks):
        def hook(module: nn.Module, args: tuple):
            x = args[0]
            for tap, keep in module_masks:
                if isinstance(x, torch.Tensor) and tap.fits(x):
                    shape = [1] * x.ndim
                    shape[tap.channel_dim] = len(keep)
                    x = x * keep.to(device=x.device, dtype=x.dtype).reshape(shape)
            return (x, *args[1:])
        return hook

    with forward_hooks(model, pre={m: hook_for(v) for m, v in masks.items()}):
        yield
