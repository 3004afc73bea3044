"""Per-epoch checkpoints: the model and optimizer state after each finished epoch, the history so far,
and the config fingerprint, written atomically by rank 0. A resumed run loads the last one and goes on
with the next epoch; because every epoch reseeds from (seed, epoch), it matches an uninterrupted run.

A process killed while saving leaves the previous checkpoint whole (the new one is written to a claimed
temporary file, fsynced and renamed; the next save removes a dead writer's temporary file). Checkpoints
hold only tensors and plain values, so they load with `weights_only=True`: resuming runs no code. A
checkpoint that cannot be read or belongs to another run is a UsageError (a ValueError; exit 2 on the CLI)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from structprune.errors import UsageError
from structprune.io.atomic import atomic_torch_save
from structprune.io.probe import first_line
from structprune.recover.config import EpochRecord
from structprune.recover.distributed import is_main_process

CHECKPOINT_NAME = "recovery-last.pt"
_START_OVER = "checkpoint folder (--checkpoint-dir, checkpoint_dir=) or drop --resume (resume=False) to start over"


@dataclass(frozen=True)
class Checkpoint:
    """What a resumed run needs: epochs done, states, history, and the run it belongs to."""

    epochs_done: int
    model_state: dict
    optimizer_state: dict
    history: tuple[EpochRecord, ...]
    fingerprint: dict


def checkpoint_path(directory: str | os.PathLike) -> Path:
    return Path(directory) / CHECKPOINT_NAME


def save_checkpoint(directory: str | os.PathLike, checkpoint: Checkpoint) -> Path:
    """Write atomically (fsynced temp file + rename) on rank 0; other ranks write nothing."""
    path = checkpoint_path(directory)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_torch_save({"epochs_done": checkpoint.epochs_done, "model": checkpoint.model_state,
                              "optimizer": checkpoint.optimizer_state,
                              "history": [r.to_json() for r in checkpoint.history],
                              "fingerprint": checkpoint.fingerprint}, path)


def load_checkpoint(directory: str | os.PathLike, fingerprint: dict) -> Checkpoint | None:
    """The last checkpoint in `directory`, or None if there is none; a checkpoint of a different run
    (other config) is refused with the fields that differ."""
    path = checkpoint_path(directory)
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"checkpoint {path} cannot be read ({first_line(exc)}); delete it, or use another "
                         f"{_START_OVER}") from exc
    diff = sorted(k for k in set(fingerprint) | set(data["fingerprint"])
                  if fingerprint.get(k) != data["fingerprint"].get(k))
    if diff:
        raise UsageError(f"checkpoint {path} belongs to a run with different settings ({', '.join(diff)}); "
                         f"use another {_START_OVER}")
    history = tuple(EpochRecord(**r) for r in data["history"])
    return Checkpoint(data["epochs_done"], data["model"], data["optimizer"], history, data["fingerprint"])


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Checkpoint) -> None:
    """Load the checkpoint's states into the (already pruned) model and its optimizer."""
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as exc:
        raise UsageError("the checkpoint does not fit this model (was it pruned with another plan?): "
                         f"{str(exc).splitlines()[0]}") from exc
    optimizer.load_state_dict(checkpoint.optimizer_state)
