"""DistributedDataParallel support for runs launched with ``torchrun``.

Sharding is per global batch: every rank draws the same seeded permutation, cuts it into global batches
of ``batch_size`` samples and takes its contiguous slice of each. With DDP's gradient averaging, a
2-process run then takes the same steps as a 1-process run with the same seed and global batch size
(models without batch norm agree to float rounding; batch norm sees per-rank statistics).
``torch.utils.data.DistributedSampler`` shards the whole epoch instead, which makes the global batches,
and therefore the trajectory, depend on the world size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_world_size() -> int:
    """The number of processes torchrun launched (``WORLD_SIZE``; 1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_batch_size(batch_size: int, world_size: int) -> None:
    """Refuse a global batch size that gives a process fewer than two samples of every batch.

    The trainer skips a batch with fewer than two samples per process (batch norm and the supervised
    contrastive loss need two), so with ``batch_size < 2 * world_size`` it would skip every batch and
    train nothing.

    Raises
    ------
    ValueError
        Naming the batch size, the number of processes and the smallest batch size that trains.
    """
    if batch_size < 2 * world_size:
        raise ValueError(
            f"batch_size={batch_size} is too small for {world_size} processes: every step needs two samples per "
            f"process (batch norm, the supervised contrastive loss), so nothing would be trained; use "
            f"--batch-size {2 * world_size} or more, or fewer processes")


def init_distributed(device_type: str) -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1), else a 1-process DistInfo.

    Backend: NCCL on CUDA, gloo on CPU.
    """
    world_size = launched_world_size()
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shard_batch(indices: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """This rank's contiguous share of one global batch of indices (shares differ by at most one)."""
    if not info.enabled:
        return indices
    bounds = torch.linspace(0, len(indices), info.world_size + 1).round().long()
    return indices[bounds[info.rank]: bounds[info.rank + 1]]


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a float64 tensor of statistics over ranks (identity when not distributed)."""
    if info.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
