"""Several processes: what torchrun tells each one, and the process group they share.

`torchrun --nproc-per-node N -m mnistlab ...` starts N copies of the command
with RANK, LOCAL_RANK and WORLD_SIZE in their environment; nothing else in
mnistlab launches processes. `mnistlab sweep` uses the group only to wait for
every process at the end (each trains its own share of the configurations);
`mnistlab train` trains one model across them with DistributedDataParallel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from .errors import UsageError

# A sweep's processes wait for each other only at the end, after training whole shares, so the
# wait can be as long as a whole sweep; gloo's default of 30 minutes would end a long one.
SWEEP_TIMEOUT = timedelta(days=7)


@dataclass(frozen=True)
class Process:
    """This process's place among those torchrun started."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def leader(self) -> bool:
        """Rank 0: the one that writes the shared files."""
        return self.rank == 0

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def launched() -> Process | None:
    """This process's rank under torchrun (or another launcher that sets the same variables), else None."""
    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
    if not all(name in os.environ for name in names):
        return None
    try:
        rank, local_rank, world_size = (int(os.environ[name]) for name in names)
    except ValueError:
        raise UsageError(f"RANK, LOCAL_RANK and WORLD_SIZE must be integers (got {', '.join(os.environ[n] for n in names)})") from None
    if not 0 <= rank < world_size:
        raise UsageError(f"RANK {rank} is not below WORLD_SIZE {world_size}")
    return Process(rank, local_rank, world_size)


def local_device(device: torch.device, process: Process) -> torch.device:
    """One CUDA device per process on a node (by local rank); the CPU stays the CPU."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", process.local_rank % torch.cuda.device_count())


def join(backend: str, timeout: timedelta | None = None) -> None:
    """Join the process group torchrun's variables describe (MASTER_ADDR, MASTER_PORT)."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend, **({"timeout": timeout} if timeout else {}))


def leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (an error if one of them died)."""
    import torch.distributed as dist

    dist.barrier()


def broadcast(value):
    """Rank 0's `value` (any picklable object), on every rank."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
