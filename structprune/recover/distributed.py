"""Recovery under torch.distributed (DDP via torchrun; gloo on CPU, nccl on GPU).

`torchrun --nproc_per_node=N -m structprune compress ...` sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; `distributed_session()` joins that group (and is a no-op for one
process). Inside it, recovery wraps the model in DistributedDataParallel and shards the training
loader with a DistributedSampler; data-driven criteria are wrapped in `AllReducedCriterion` so every
rank scores with the same (averaged) statistics and derives the same plan; only rank 0 writes files.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size, local rank (GPU index) and backend (None = single)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def context_from_env(env: Mapping[str, str] | None = None) -> DistContext:
    """The torchrun variables as a DistContext (one process when they are absent)."""
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    return DistContext(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")),
                       default_backend() if world > 1 else None)


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def is_active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def current_context() -> DistContext:
    """The initialised process group's view, or a single-process context."""
    if not is_active():
        return DistContext()
    local = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return DistContext(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())


@contextmanager
def distributed_session(backend: str | None = None) -> Iterator[DistContext]:
    """Join the torchrun process group for the duration of the block, then leave it.

    >>> with distributed_session() as ctx:   # a plain `python` run: one process
    ...     ctx.world_size
    1
    """
    ctx = context_from_env()
    if not ctx.enabled or dist.is_initialized():
        yield current_context()
        return
    backend = backend or ctx.backend
    if backend == "nccl":
        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend=backend, init_method="env://")
    try:
        yield current_context()
    finally:
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the only rank that writes files."""
    return current_context().is_main


def barrier() -> None:
    if is_active():
        dist.barrier()


def from_rank_zero(make):
    """`make()` evaluated on rank 0 and sent to every rank (e.g. a checkpoint only rank 0 can read)."""
    if not is_active():
        return make()
    box: list = [None]
    if dist.get_rank() == 0:
        try:
            box = [(make(), None)]
        except Exception as exc:  # noqa: BLE001 - re-raised on every rank, so none waits forever
            box = [(None, exc)]
    dist.broadcast_object_list(box, src=0)
    value, error = box[0]
    if error is not None:
        raise error
    return value


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; the input is untouched). Identity in a single process."""
    out = tensor.detach().clone()
    if is_active():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(tensor) / (dist.get_world_size() if is_active() else 1)


def all_reduce_scores(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Average per-group calibration scores over ranks, so all ranks select the same plan."""
    if not is_active():
        return {k: np.asarray(v, dtype=np.float64) for k, v in scores.items()}
    keys = sorted(scores)
    sizes = [len(scores[k]) for k in keys]
    flat = torch.from_numpy(np.concatenate([np.asarray(scores[k], dtype=np.float64) for k in keys] or [[]]))
    mean = all_reduce_mean(flat).numpy()
    bounds = np.cumsum([0, *sizes])
    return {k: mean[bounds[i]:bounds[i + 1]] for i, k in enumerate(keys)}


@dataclass(frozen=True)
class AllReducedCriterion:
    """Wrap a criterion so that its scores are averaged over ranks (register it like any criterion)."""

    base: object

    @property
    def name(self) -> str:
        return getattr(self.base, "name", "criterion")

    @property
    def needs_data(self) -> bool:
        return bool(getattr(self.base, "needs_data", False))

    def score(self, groups, ctx) -> dict[str, np.ndarray]:
        return all_reduce_scores(self.base.score(groups, ctx))


def shard_loader(loader: DataLoader, *, seed: int) -> DataLoader:
    """The same loader over this rank's shard (DistributedSampler; shuffled if the original was)."""
    if not is_active() or not isinstance(loader, DataLoader):
        return loader
    ctx = current_context()
    sampler = DistributedSampler(loader.dataset, num_replicas=ctx.world_size, rank=ctx.rank,
                                 shuffle=isinstance(loader.sampler, RandomSampler), seed=seed)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                      num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                      pin_memory=loader.pin_memory, drop_last=loader.drop_last)


def wrap_for_training(model: nn.Module, *, find_unused: bool = False) -> nn.Module:
    """DistributedDataParallel around `model` when a group is active (its parameters are broadcast
    from rank 0 on construction, so every rank starts from the same weights); else the model itself.
    `find_unused`: some parameters may get no gradient (an encoder's pooler when only its hidden
    states are distilled), which DDP must be told about."""
    if not is_active():
        return model
    kwargs = {"find_unused_parameters": True} if find_unused else {}
    if model.parameters().__next__().is_cuda:
        return nn.parallel.DistributedDataParallel(model, device_ids=[current_context().local_rank], **kwargs)
    return nn.parallel.DistributedDataParallel(model, **kwargs)


def sync_buffers(model: nn.Module) -> None:
    """Average floating buffers (BatchNorm running statistics) over ranks and take the others from rank 0.
    DDP broadcasts buffers before each forward, so after the last step each rank holds statistics
    updated by its own batch; syncing makes validation and checkpoints identical on every rank."""
    if not is_active():
        return
    with torch.no_grad():
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.copy_(all_reduce_mean(buffer))
            else:
                dist.broadcast(buffer, src=0)


def set_sampler_epoch(loader, epoch: int) -> None:
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)
