"""Per-epoch checkpoints: the model and optimizer state after each finished epoch, the history so far,
and the config fingerprint, written atomically by rank 0. A resumed run loads the last one and goes on
with the next epoch; because every epoch reseeds from (seed, epoch), it matches an uninterrupted run."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from structprune.recover.config import EpochRecord
from structprune.recover.distributed import is_main_process

CHECKPOINT_NAME = "recovery-last.pt"


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


def save_checkpoint(directory: str | os.PathLike, checkpoint: Checkpoint) -> Path | None:
    """Write atomically (temp file + rename) on rank 0; other ranks write nothing."""
    path = checkpoint_path(directory)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"epochs_done": checkpoint.epochs_done, "model": checkpoint.model_state,
                "optimizer": checkpoint.optimizer_state, "history": [r.to_json() for r in checkpoint.history],
                "fingerprint": checkpoint.fingerprint}, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(directory: str | os.PathLike, fingerprint: dict) -> Checkpoint | None:
    """The last checkpoint in `directory`, or None if there is none; a checkpoint of a different run
    (other config) is refused with the fields that differ."""
    path = checkpoint_path(directory)
    if not path.exists():
        return None
    data = torch.load(path, map_location="cpu", weights_only=False)
    diff = sorted(k for k in set(fingerprint) | set(data["fingerprint"])
                  if fingerprint.get(k) != data["fingerprint"].get(k))
    if diff:
        raise ValueError(f"checkpoint {path} belongs to a run with different settings ({', '.join(diff)}); "
                         "use another checkpoint_dir or resume=False to start over")
    history = tuple(EpochRecord(**r) for r in data["history"])
    return Checkpoint(data["epochs_done"], data["model"], data["optimizer"], history, data["fingerprint"])


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: Checkpoint) -> None:
    """Load the checkpoint's states into the (already pruned) model and its optimizer."""
    try:
        model.load_state_dict(checkpoint.model_state)
    except RuntimeError as exc:
        raise ValueError("the checkpoint does not fit this model (was it pruned with another plan?): "
                         f"{str(exc).splitlines()[0]}") from exc
    optimizer.load_state_dict(checkpoint.optimizer_state)
