"""Multi-process runs under torchrun: one process per device, rank 0 writes checkpoints, caches and logs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from utils.errors import UserError

COLLECTIVE_TIMEOUT = timedelta(hours=12)


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device: torch.device) -> World:
    """Join the process group torchrun describes (RANK, WORLD_SIZE); a plain run is a world of one."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return World()
    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda" and local_rank >= torch.cuda.device_count():
            raise UserError(f"torchrun started a process for GPU {local_rank} but this machine has "
                            f"{torch.cuda.device_count()} GPU(s): use --nproc_per_node={torch.cuda.device_count()} "
                            f"or less, or --device cpu to run every process on the CPU (gloo)")  # fmt: skip
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)  # collectives run on the current device: each rank its own GPU
        # Ranks wait at barriers while rank 0 downloads, waits for another run's extraction or publishes a bank:
        # hours, not the default 10 minutes.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def local_device(device: torch.device, world: World) -> torch.device:
    """Each rank its own GPU under torchrun; CPU stays CPU."""
    return torch.device("cuda", world.local_rank) if device.type == "cuda" and world.distributed else device


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def close(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def from_main(value: Any, world: World) -> Any:
    """Rank 0's `value`, on every rank (a decision only the main process may take, e.g. "is it cached?")."""
    if not world.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agree(value: Any, world: World) -> bool:
    """Whether every rank holds the same `value` (known on every rank, so that all of them can stop together)."""
    if not world.distributed:
        return True
    values: list[Any] = [None] * world.size
    dist.all_gather_object(values, value)
    return all(v == values[0] for v in values)


@contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block first (downloads, caches), the others after it: no two processes write one file."""
    if not world.main:
        barrier(world)
    yield
    if world.main:
        barrier(world)
