"""torch.distributed for sharded benchmark runs (`torchrun --nproc-per-node N -m vispec_bench run ...`).

One device per rank (cuda:LOCAL_RANK, or the CPU with gloo). Sample i goes to rank i mod world
size, so AR and every method for a sample run on the same rank and device. Each rank appends its
own record shard; rank 0 writes the manifest and, after a barrier, the merged summary.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, sample_index: int) -> bool:
        return sample_index % self.world_size == self.rank

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def broadcast(self, value):
        """rank 0's value on every rank."""
        if not self.enabled:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value) -> list:
        """Every rank's value, in rank order, on every rank."""
        if not self.enabled:
            return [value]
        values = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values


def init_from_environment(device: str) -> DistContext:
    """Join the process group that torchrun describes in the environment (WORLD_SIZE, RANK, ...)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        # A rank that dies leaves the others waiting at the next collective; time out instead of hanging.
        timeout = datetime.timedelta(seconds=float(os.environ.get("VISPEC_DIST_TIMEOUT", "1800")))
        torch.distributed.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
    return DistContext(rank, world_size, local_rank)


def rank_device(device: str, context: DistContext) -> str:
    """cuda -> cuda:LOCAL_RANK under torchrun; an explicit cuda:N or cpu stays."""
    if context.enabled and device == "cuda":
        return f"cuda:{context.local_rank}"
    return device
