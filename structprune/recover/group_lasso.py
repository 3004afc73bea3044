"""Group-lasso sparsity training over channel groups: the coupled unit the plan removes is penalised whole.

Notation: a prunable group g has channels c = 0..size-1; channel c owns one slice of every parameter
member m of g (producers' output rows and biases, norms' scale and bias entries, consumers' input
columns; `positions` says which rows). Its squared coupled norm is s_c = sum_m ||slice_m(c)||^2 and the
smooth group-lasso penalty is

    P(w) = sum over groups g, channels c of sqrt(eps + s_c)

so a residual add's channel counts the rows of every producer feeding the add, once, in one norm (what
Wen et al.'s structured sparsity learning does per filter, extended to the coupled unit). Training
minimises  data loss + lambda * P(w)  with the recovery loop (`train.train_epochs`): its optimizer,
schedule, seeding and progress bars; checkpoints are not kept (a sparsity run is short). Its gradient
w_slice / sqrt(eps + s_c) shrinks every slice of a channel by the same factor, so weak channels go to
zero together and the `group_norm` criterion (the same sqrt(eps + s_c)) separates them from the rest.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from structprune.criteria.group_norm import GROUP_NORM_EPS
from structprune.recover.config import EpochRecord, RecoveryConfig
from structprune.recover.objectives import ClassificationObjective
from structprune.recover.train import TrainPlan, train_epochs

PLAIN_SCHEDULES = ("cosine", "onecycle", "constant", "step")  # others need a pruning context: cosine instead


@dataclass(frozen=True)
class GroupLassoConfig:
    """Sparsity training: `epochs` of data loss + `lam` * P(w) (see the module; `eps` smooths the norm),
    then threshold pruning, at `threshold` (an explicit l2 threshold on the coupled norm) or, without
    one, at the threshold the compress budget (ratio, target_macs, target_params) asks for.

    >>> GroupLassoConfig(epochs=3, lam=1e-3).threshold is None
    True
    """

    epochs: int
    lam: float
    eps: float = GROUP_NORM_EPS
    threshold: float | None = None

    def __post_init__(self) -> None:
        _check(isinstance(self.epochs, int) and not isinstance(self.epochs, bool) and self.epochs >= 1,
               f"sparsity training epochs must be a positive integer, got {self.epochs!r}")
        _check(_positive(self.lam), f"the group-lasso weight lambda must be a positive number, e.g. 1e-3, "
                                    f"got {self.lam!r}")
        _check(_positive(self.eps), f"the group-lasso smoothing eps must be a positive number, got {self.eps!r}")
        _check(self.threshold is None or _positive(self.threshold),
               f"the group-norm threshold must be a positive number, e.g. 1e-2, got {self.threshold!r}")


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True, eq=False)
class _Slice:
    """The rows of one parameter axis that belong to a group, and the group channel of each."""

    fqn: str
    axis: int
    rows: torch.Tensor      # int64 row indices along `axis`
    channels: torch.Tensor  # int64 group channel of each row


@dataclass(frozen=True, eq=False)
class _Term:
    group_id: str
    size: int
    slices: tuple[_Slice, ...]


@dataclass(frozen=True, eq=False)
class GroupLassoPenalty:
    """P(w) over the given channel groups (see the module): `penalty(model)` is differentiable;
    `norms(model)` gives each group's coupled norms sqrt(eps + s_c) as numpy arrays.

    >>> import structprune
    >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    >>> _ = [p.data.fill_(1.0) for p in net.parameters()]
    >>> graph = structprune.analyze(net, torch.randn(1, 2))
    >>> GroupLassoPenalty.of(graph, net, eps=0.0)(net).item()  # 3 channels, each sqrt(2 + 1 + 1)
    6.0
    """

    terms: tuple[_Term, ...]
    eps: float = GROUP_NORM_EPS

    @classmethod
    def of(cls, graph, model: nn.Module, groups: Iterable | None = None, eps: float = GROUP_NORM_EPS):
        """The penalty of `groups` (default: every prunable group of `graph`) on `model`'s parameters
        (buffers do not count)."""
        params = dict(model.named_parameters(remove_duplicate=False))
        terms = tuple(_term(group, params) for group in (graph.prunable if groups is None else groups))
        return cls(tuple(t for t in terms if t.slices), eps)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        params = dict(model.named_parameters(remove_duplicate=False))
        norms = [torch.sqrt(self.eps + _squares(term, params)).sum() for term in self.terms]
        return torch.stack(norms).sum() if norms else torch.zeros(())

    def norms(self, model: nn.Module) -> dict[str, np.ndarray]:
        """Each group's coupled norms, channel by channel (float64)."""
        params = dict(model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            return {t.group_id: torch.sqrt(self.eps + _squares(t, params)).double().cpu().numpy() for t in self.terms}


def _term(group, params: dict) -> _Term:
    slices = []
    for member in group.members:
        if member.fqn not in params:
            continue
        rows = np.flatnonzero(np.asarray(member.positions) >= 0)
        slices.append(_Slice(member.fqn, member.axis, torch.as_tensor(rows, dtype=torch.int64),
                             torch.as_tensor(np.asarray(member.positions)[rows], dtype=torch.int64)))
    return _Term(group.id, group.size, tuple(slices))


def _squares(term: _Term, params: dict) -> torch.Tensor:
    """s_c for every channel of one group: squares summed over each member's rows, rows summed per channel."""
    first = params[term.slices[0].fqn]
    total = torch.zeros(term.size, dtype=first.dtype, device=first.device)
    for piece in term.slices:
        weight = params[piece.fqn]
        per_row = weight.square().sum(dim=[d for d in range(weight.ndim) if d != piece.axis]) if weight.ndim > 1 \
            else weight.square()
        rows = per_row.index_select(0, piece.rows.to(weight.device))
        total = total.index_add(0, piece.channels.to(weight.device), rows.to(total.dtype))
    return total


@dataclass(frozen=True, eq=False)
class PenalizedObjective:
    """The classification objective plus lambda * P(w) of the model being trained; its training totals
    (loss, accuracy) stay the data term's. Each validation (once per epoch) appends the epoch's penalty
    and norms to `log`, which the caller reads after training."""

    base: ClassificationObjective
    penalty: GroupLassoPenalty
    model: nn.Module
    lam: float
    log: list

    @property
    def metric(self) -> str:
        return self.base.metric

    def wrap(self, model: nn.Module) -> nn.Module:
        return self.base.wrap(model)

    def fingerprint(self) -> dict:
        return {"group_lasso": self.lam, "group_lasso_eps": self.penalty.eps}

    def loss_and_totals(self, training: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        loss, totals = self.base.loss_and_totals(training, batch)
        return loss + self.lam * self.penalty(self.model), totals

    def train_stats(self, total: torch.Tensor) -> dict:
        return self.base.train_stats(total)

    def evaluate(self, model: nn.Module, loader) -> dict:
        result = self.base.evaluate(model, loader)
        with torch.no_grad():
            self.log.append((float(self.penalty(self.model)), self.penalty.norms(self.model)))
        return result

    def postfix(self, total: torch.Tensor, last: EpochRecord | None) -> tuple[dict, dict]:
        return self.base.postfix(total, last)


@dataclass(frozen=True)
class SparsityEpoch:
    """One epoch of sparsity training: P(w) after it (without lambda), the data loss and accuracy of its
    training passes, and validation accuracy (percent; None without validation data)."""

    epoch: int
    penalty: float
    train_loss: float
    train_accuracy: float | None
    val_accuracy: float | None

    def to_json(self, norms: dict[str, np.ndarray], threshold: float | None, lam: float) -> dict:
        """The record with lambda * P(w) and the share of channels below `threshold` after this epoch."""
        return {"epoch": self.epoch, "penalty": self.penalty, "weighted_penalty": lam * self.penalty,
                "train_loss": self.train_loss, "train_accuracy": self.train_accuracy,
                "val_accuracy": self.val_accuracy, "below_threshold_share": share_below(norms, threshold)}


def share_below(norms: dict[str, np.ndarray], threshold: float | None) -> float | None:
    """The share of all channels in `norms` whose norm is below `threshold` (None without a threshold)."""
    if threshold is None:
        return None
    values = np.concatenate([np.asarray(v) for v in norms.values()]) if norms else np.zeros(0)
    return round(float((values < threshold).mean()), 6) if values.size else 0.0


@dataclass(frozen=True, eq=False)
class SparsityResult:
    """The sparsity-trained model (a copy), its per-epoch history and norms after each epoch, and the
    settings; `to_json(threshold)` is the report's `sparsity` section."""

    model: nn.Module
    config: GroupLassoConfig
    history: tuple[SparsityEpoch, ...]
    norm_history: tuple[dict, ...]
    penalty_before: float
    val_accuracy_before: float | None
    schedule: str
    base_lr: float

    @property
    def norms(self) -> dict[str, np.ndarray]:
        """The coupled norms after the last epoch."""
        return self.norm_history[-1]

    def to_json(self, threshold: float | None = None) -> dict:
        """The report's `sparsity` section; `threshold`: the one the pruning used (default: the config's)."""
        threshold = self.config.threshold if threshold is None else threshold
        epochs = [e.to_json(n, threshold, self.config.lam) for e, n in zip(self.history, self.norm_history)]
        return {"method": "group_lasso", "epochs": self.config.epochs, "lambda": self.config.lam,
                "eps": self.config.eps, "schedule": self.schedule, "base_lr": self.base_lr,
                "threshold": threshold, "threshold_source": "explicit" if self.config.threshold else "budget",
                "penalty_before": self.penalty_before, "val_accuracy_before": self.val_accuracy_before,
                "channels": int(sum(len(v) for v in self.norms.values())),
                "below_threshold_share": share_below(self.norms, threshold), "history": epochs}


def train_group_lasso(model: nn.Module, graph, train_loader, val_loader, config: GroupLassoConfig,
                      training: RecoveryConfig | None = None, *, groups: Iterable | None = None) -> SparsityResult:
    """Train a copy of `model` for `config.epochs` on cross-entropy + lambda * P(w) over `groups` (default:
    the prunable groups of `graph`, the channel graph of `model`), with `training`'s optimizer, LR, schedule
    (one of PLAIN_SCHEDULES, else cosine) and seed (its epochs and method are not used). `model` is not modified."""
    training = replace(training or RecoveryConfig(), method="finetune", epochs=config.epochs, checkpoint_dir=None,
                       resume=False, measure_dead_rate=False)
    schedule = training.schedule if training.schedule in PLAIN_SCHEDULES else "cosine"
    trained = copy.deepcopy(model)
    penalty = GroupLassoPenalty.of(graph, trained, groups, config.eps)
    objective = PenalizedObjective(ClassificationObjective.for_config(training, None), penalty, trained,
                                   config.lam, [])
    before = float(penalty(trained).detach())
    accuracy_before = objective.base.evaluate(trained, val_loader)["val_accuracy"]
    plan = TrainPlan(config.epochs, schedule, training.lr,
                     fingerprint={**training.fingerprint(), **objective.fingerprint()})
    history, _ = train_epochs(trained, train_loader, val_loader, training, plan, desc="sparsity",
                              objective=objective)
    epochs = tuple(SparsityEpoch(r.epoch, p, r.train_loss, r.train_accuracy, r.val_accuracy)
                   for r, (p, _) in zip(history, objective.log))
    return SparsityResult(trained, config, epochs, tuple(n for _, n in objective.log), before, accuracy_before,
                          schedule, training.lr)
