"""Two gloo processes on CPU: the same plan as one process, DDP fine-tuning that ends with identical
weights on both ranks, and only rank 0 writing files."""
from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import structprune
from structprune.criteria import get_criterion
from structprune.recover import (
    AllReducedCriterion,
    RecoveryConfig,
    all_reduce_scores,
    distributed_session,
    is_main_process,
    recover,
)
from structprune.recover.distributed import context_from_env

WORLD = 2
EXAMPLE = torch.zeros(2, 64)


def _loaders() -> tuple[DataLoader, DataLoader]:
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)
    return (DataLoader(TensorDataset(x[:1400], y[:1400]), batch_size=32, shuffle=True),
            DataLoader(TensorDataset(x[1400:], y[1400:]), batch_size=256))


def _dense() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))


def _config(rank: int, out: Path) -> RecoveryConfig:
    return RecoveryConfig(method="finetune", epochs=2, lr=0.05, progress=False, seed=3,
                          checkpoint_dir=str(out / f"checkpoints-rank{rank}"))


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with distributed_session() as ctx:
        assert ctx.world_size == WORLD and ctx.backend == "gloo" and is_main_process() == (rank == 0)
        dense = _dense()
        compressed = structprune.compress(dense, EXAMPLE, ratio=0.5, criterion=AllReducedCriterion(get_criterion("l2")))
        averaged = all_reduce_scores({"g": np.array([float(rank), 1.0])})["g"]
        config = _config(rank, Path(out))
        result = recover(compressed.model, *_loaders(), config)
        resumed = recover(compressed.model, *_loaders(), dataclasses.replace(config, resume=True))  # rank 0's file
        same = all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(),
                                                      resumed.model.state_dict().values()))
        torch.save({"plan": compressed.plan.to_json(), "state": result.model.state_dict(), "averaged": averaged,
                    "history": [r.to_json() for r in result.history], "resumed_same": same},
                   Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.slow
def test_two_processes_choose_the_plan_of_one_process(two_ranks) -> None:
    _, ranks = two_ranks
    single = structprune.compress(_dense(), EXAMPLE, ratio=0.5, criterion="l2").plan
    assert ranks[0]["plan"] == ranks[1]["plan"] == single.to_json()
    assert list(ranks[0]["averaged"]) == list(ranks[1]["averaged"]) == [0.5, 1.0]


@pytest.mark.slow
def test_ddp_finetuning_ends_with_identical_weights_on_every_rank(two_ranks) -> None:
    _, ranks = two_ranks
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert ranks[0]["history"] == ranks[1]["history"]
    first, last = ranks[0]["history"][0], ranks[0]["history"][-1]
    assert last["val_accuracy"] > 80 and last["train_loss"] < first["train_loss"]


@pytest.mark.slow
def test_only_rank_zero_writes_checkpoints(two_ranks) -> None:
    out, _ = two_ranks
    assert (out / "checkpoints-rank0" / "recovery-last.pt").exists()
    assert not (out / "checkpoints-rank1").exists()


@pytest.mark.slow
def test_every_rank_resumes_from_the_checkpoint_rank_zero_wrote(two_ranks) -> None:
    _, ranks = two_ranks
    assert ranks[0]["resumed_same"] and ranks[1]["resumed_same"]


def test_single_process_context_from_env() -> None:
    ctx = context_from_env({})
    assert (ctx.rank, ctx.world_size, ctx.backend, ctx.is_main, ctx.enabled) == (0, 1, None, True, False)
    torchrun = context_from_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert torchrun.enabled and not torchrun.is_main and torchrun.backend in ("gloo", "nccl")
    with distributed_session() as session:
        assert session.world_size == 1 and is_main_process()
