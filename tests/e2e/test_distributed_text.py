"""Label-free distillation of a tiny BERT encoder under DDP: two gloo processes on CPU end with identical
weights and histories, fidelity rises, only rank 0 writes the checkpoint, and both ranks resume from it
(the same machinery as the classification path in test_distributed.py)."""
from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

import structprune
from helpers import import_transformers
from structprune.recover import RecoveryConfig, distributed_session, recover

WORLD = 2


def _sentences(count: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (count, 10), generator=g)
    mask = (torch.arange(10)[None] < torch.randint(3, 11, (count, 1), generator=g)).long()
    return [{"input_ids": i, "attention_mask": m} for i, m in zip(ids * mask, mask)]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    transformers = import_transformers()
    with distributed_session():
        torch.manual_seed(0)
        config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=64, vocab_size=100, initializer_range=0.2,
                                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        dense = transformers.BertModel(config).eval()
        train = DataLoader(_sentences(32, seed=1), batch_size=8, shuffle=True)
        val = DataLoader(_sentences(16, seed=2), batch_size=8)
        pruned = structprune.compress(dense, next(iter(val)), ratio=0.5).model
        recovery = RecoveryConfig(method="distill", epochs=2, optimizer="adamw", lr=3e-3, weight_decay=0.0,
                                  progress=False, seed=3, checkpoint_dir=str(Path(out) / f"checkpoints-rank{rank}"))
        result = recover(pruned, train, val, recovery, dense=dense)
        resumed = recover(pruned, train, val, dataclasses.replace(recovery, resume=True), dense=dense)
        same = all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(),
                                                      resumed.model.state_dict().values()))
        torch.save({"state": result.model.state_dict(), "section": result.to_json(), "resumed_same": same},
                   Path(out) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("ddp-text")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.slow
def test_ddp_distillation_without_labels_ends_identical_on_every_rank(two_ranks) -> None:
    out, ranks = two_ranks
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    first, second = ranks[0]["section"], ranks[1]["section"]
    first.pop("checkpoint"), second.pop("checkpoint")
    assert first == second and first["metric"] == "fidelity"
    assert first["val_fidelity_after"] > first["val_fidelity_before"] + 0.1
    assert (out / "checkpoints-rank0" / "recovery-last.pt").exists()
    assert not (out / "checkpoints-rank1").exists()
    assert ranks[0]["resumed_same"] and ranks[1]["resumed_same"]
