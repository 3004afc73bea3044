"""CompressConfig: every option of `compress`, checked once, when the config is built.

The API, the CLI and the CLI's JobOptions all build one; nothing downstream checks the options again.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from structprune.criteria import get_criterion
from structprune.errors import PlanError
from structprune.rewrite.shrink import DEFAULT_SHRINK_RULES
from structprune.rules import DEFAULT_RULES, check_attention_mode
from structprune.rules.modules import DEFAULT_MODULE_RULES
from structprune.selection import (
    GroupRatio,
    LatencyTarget,
    SensitivityTable,
    Target,
    as_group_ratios,
    check_max_group_ratio,
    check_ratio,
    check_round_to,
    check_target_options,
)


class _DefaultRatio(float):
    """The ratio a config has when none was given: 0.5 to every reader, but recognisably not the user's
    choice, so that a budget target (`target_macs`) may take its place and an explicit ratio beside a
    target is refused. It survives `replace`, copies and pickling."""

    __slots__ = ()


DEFAULT_RATIO = _DefaultRatio(0.5)


class _DefaultRoundTo(int):
    """round_to when none was given: 1 to every reader, but a latency target may pick the channel multiple
    onnxruntime's kernels like instead (`latency_target.LATENCY_ROUND_TO`); an explicit 1 is kept."""

    __slots__ = ()


DEFAULT_ROUND_TO = _DefaultRoundTo(1)


@dataclass(frozen=True)
class CompressConfig:
    """How `compress` chooses, rewrites and verifies. Building one checks every field (PlanError for
    ratio, round_to and max_group_ratio, ValueError for an unknown criterion, UsageError for an unknown
    attention mode).

    - ratio: fraction of each prunable group's channels to remove, in [0, 1) (the nearest count, halves
      rounded up: `selection.select.removed_at`); with `global_pruning`, of all prunable channels together,
      never more than `max_group_ratio` of one group.
    - target_macs, target_params: a budget instead of a ratio, the fraction in (0, 1) of the dense model's
      MACs or parameters to keep (within 2%); one of them, and not beside an explicit ratio (`ratio` is
      then None; dropping the target again needs a ratio).
      target_latency_ms: a budget in milliseconds instead: the onnxruntime median latency on this machine
      (1 thread, the example inputs), searched by measuring candidate models, each timed alternately with
      the dense model so that a drifting machine does not mislead the search (`structprune.latency_target`);
      `latency_measure(model, example_inputs) -> ms` replaces that measurement (a fake one in tests).
      allocation: how a budget is spread, "global" (default: one threshold on normalised scores, as
      `global_pruning`), "uniform" (one ratio for every group) or "sensitivity" (deepest where pruning a
      group alone costs least, read from `sensitivity`, a SensitivityTable, or measured on compress's
      data; also with a plain ratio) or "coreset" (by the coreset bound's global epsilon over the groups'
      empirical sensitivities on compress's data, `selection.coreset_allocation`). See
      `structprune.selection.targets` and `structprune.sensitivity`.
    - group_ratios: ratios of their own for the groups whose outputs match globs, {glob: ratio} or
      {glob: (ratio, "uniform" | "global")} or ['GLOB=R[:global]', ...] (`selection.group_ratios`); with a
      plain ratio only (not a budget target or an allocation), by which the groups no glob matches are
      pruned; without an explicit ratio those stay whole.
    - criterion: a registered name (`structprune.criteria.CRITERIA`) or a Criterion object; `seed` seeds it.
    - ignore: module FQN globs whose own outputs stay whole; round_to: every layer a group touches keeps a
      multiple of it (`selection.channel_multiple`); a latency target defaults it to 8 (`latency_target`).
    - attention: "heads" (drop whole heads) or "head_dims" (drop the same dims from every head).
    - recapture, strict: how verification runs (see `compress`).
    - recalibrate_bn, reconstruct: what runs after the rewrite when `compress` is given data
      (reconstruct=None: only for a data-driven criterion).
    - rules, module_rules, shrink_rules: the op, module and shrink tables, extended with a user's layers
      (`structprune.DEFAULT_RULES | {...}`).

    >>> config = CompressConfig(ratio=0.3, ignore="fc")
    >>> config.ignore, config.with_options(ratio=0.6).ratio
    (('fc',), 0.6)
    >>> CompressConfig(target_macs=0.5).target, CompressConfig(target_macs=0.5).ratio
    (Target(kind='macs', fraction=0.5, allocation='global', tolerance=0.02), None)
    """

    ratio: float | None = DEFAULT_RATIO
    criterion: Any = "l2"
    global_pruning: bool = False
    max_group_ratio: float = 0.9
    round_to: int = DEFAULT_ROUND_TO
    ignore: tuple[str, ...] = ()
    seed: int = 0
    attention: str = "heads"
    recapture: bool = True
    strict: bool = False
    recalibrate_bn: bool = True
    reconstruct: bool | None = None
    rules: Mapping = field(default_factory=lambda: DEFAULT_RULES, repr=False)
    module_rules: Mapping = field(default_factory=lambda: DEFAULT_MODULE_RULES, repr=False)
    shrink_rules: Mapping = field(default_factory=lambda: DEFAULT_SHRINK_RULES, repr=False)
    target_macs: float | None = None
    target_params: float | None = None
    allocation: str | None = None
    target_latency_ms: float | None = None
    latency_measure: Callable[[Any, Any], float] | None = field(default=None, repr=False)
    sensitivity: SensitivityTable | None = field(default=None, repr=False)
    group_ratios: tuple[GroupRatio, ...] = ()

    def __post_init__(self) -> None:
        given = self.ratio is not None and not isinstance(self.ratio, _DefaultRatio)
        if given:
            check_ratio(self.ratio)
        target = self._target(given)
        if target is not None:  # it chooses the ratio: None, so that no code path prunes by a ratio nobody gave
            object.__setattr__(self, "ratio", None)
        elif self.ratio is None:
            check_ratio(self.ratio)  # no target and no ratio: the usual error
        get_criterion(self.criterion)  # an unknown name raises, listing the registered ones
        check_round_to(self.round_to)
        check_max_group_ratio(self.max_group_ratio)
        check_attention_mode(self.attention)
        ignore = (self.ignore,) if isinstance(self.ignore, str) else tuple(self.ignore)
        object.__setattr__(self, "ignore", ignore)
        object.__setattr__(self, "group_ratios", as_group_ratios(self.group_ratios))
        if self.group_ratios and (target is not None or self.allocation is not None):
            raise PlanError("group_ratios set ratios per glob: they take a plain ratio, not a budget target or an "
                            "allocation; drop one or the other")
        if self.group_ratios and isinstance(self.ratio, _DefaultRatio):  # only the groups asked for are pruned
            object.__setattr__(self, "ratio", 0.0)

    @property
    def target(self) -> Target | LatencyTarget | None:
        """The budget to prune to (None: prune by `ratio`).

        >>> CompressConfig(target_params=0.3).target.kind, CompressConfig(target_latency_ms=2.5).target.ms
        ('params', 2.5)
        """
        return self._target(False)

    @property
    def round_to_given(self) -> bool:
        """False while round_to is the default 1 (a latency target then picks its channel multiple)."""
        return not isinstance(self.round_to, _DefaultRoundTo)

    def _target(self, ratio_given: bool) -> Target | LatencyTarget | None:
        return check_target_options(ratio_given, self.target_macs, self.target_params, self.allocation,
                                    self.target_latency_ms)

    def with_options(self, **options: Any) -> CompressConfig:
        """This config with `options` (field names) replaced, checked again."""
        return replace(self, **options) if options else self


def compress_config(config: CompressConfig | None, options: Mapping[str, Any]) -> CompressConfig:
    """`config` (default: CompressConfig()) with keyword `options` laid over: what every API entry
    point does with its `config=` and keyword arguments."""
    return (config if config is not None else CompressConfig()).with_options(**options)
