"""Several processes: what torchrun tells each one, and the process group they share.

`torchrun --nproc-per-node N -m mnistlab ...` starts N copies of the command
with RANK, LOCAL_RANK and WORLD_SIZE in their environment; nothing else in
mnistlab launches processes. `mnistlab sweep` uses the group only to wait for
every process at the end (each trains its own share of the configurations);
`mnistlab train` trains one model across them with DistributedDataParallel.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..base.errors import UsageError
from ..base.system import end_with_parent, process_alive
from .evaluation import predictions
from .training import Trainee

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
    # torchrun killed with SIGKILL cannot pass a signal on to its ranks: without this they would train on as
    # orphans, holding the run. SIGTERM stops a rank as Ctrl-C does: what is committed is kept.
    if launched() is not None and not end_with_parent():
        os.kill(os.getpid(), signal.SIGTERM)  # the launcher ended before we asked
    if not dist.is_initialized():
        dist.init_process_group(backend, **({"timeout": timeout} if timeout else {}))
        # Who is who, so that a process whose peer died can say which one (see _who_failed).
        process = launched()
        if process is not None:
            dist.distributed_c10d._get_default_store().set(f"mnistlab/pid/{process.rank}",
                                                           f"{socket.gethostname()}:{os.getpid()}")


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (an error if one of them died)."""
    dist.barrier()


def broadcast(value):
    """Rank 0's `value` (any picklable object), on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------
# One network trained across processes (DistributedDataParallel)
#
# Every rank builds the same trainee from the same seed and draws the same
# shuffled order from the same generator; each takes its contiguous slice of
# every global batch (batch_size / world_size images), so the gradient DDP
# averages over the ranks is the gradient of the global batch's mean loss, and
# the run is the single-process run of the same config up to float rounding.

def backend() -> str:
    """gloo for CPU tensors, NCCL for CUDA ones where there are GPUs."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def check_split(batch_size: int, n_train: int, drop_last: bool, world_size: int) -> None:
    """Refuse a batch that the ranks cannot share equally (the averaged gradient would not be the batch's)."""
    if batch_size % world_size:
        raise UsageError(f"--batch-size {batch_size} does not split over {world_size} processes; use a multiple "
                         f"of {world_size} (each process takes batch_size / {world_size} images of every batch)")
    last = n_train % batch_size
    if last and not drop_last and last % world_size:
        raise UsageError(f"the last batch of each epoch holds {last} images ({n_train} training images, batch "
                         f"{batch_size}), which do not split over {world_size} processes; add --drop-last or "
                         "choose another --batch-size")


class Shard:
    """Batches as one rank sees them: its contiguous slice of every global batch."""

    def __init__(self, batches, process: Process):
        self.batches, self.process = batches, process
        self.batch_size = batches.batch_size // process.world_size
        self.y = batches.y  # train_epoch sums its losses on this device

    def __len__(self) -> int:
        return len(self.batches)

    def epoch(self, generator: torch.Generator):
        r, n = self.process.rank, self.process.world_size
        for xb, yb in self.batches.epoch(generator):
            size = len(yb) // n
            yield xb[r * size:(r + 1) * size], yb[r * size:(r + 1) * size]


class DistributedTrainee(Trainee):
    """A network wrapped in DistributedDataParallel, seeing its rank's shard of every batch: its step is the
    single network's (DDP averages the gradients over the ranks inside backward); the epoch's loss and the
    accuracies are reduced over the ranks."""

    process: Process

    def state(self) -> dict[str, Any]:
        wrapped, self.model = self.model, self.model.module  # the network's own keys, not DDP's `module.`
        try:
            return super().state()
        finally:
            self.model = wrapped

    def reduce(self, mean_loss: torch.Tensor) -> torch.Tensor:
        total = mean_loss.detach().clone()
        dist.all_reduce(total)  # a sum (gloo has no average); equal shards, so the mean of the means
        return total / self.process.world_size

    def accuracies(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], float | None]:
        r, n = self.process.rank, self.process.world_size
        mine = x.tensor_split(n)[r], y.tensor_split(n)[r]
        correct = (predictions(self.model.module, mine[0]) == mine[1]).sum(dtype=torch.int64).reshape(1)
        dist.all_reduce(correct)
        return [int(correct) / len(y)], None


def distribute(trainee: Trainee, process: Process, device: torch.device) -> DistributedTrainee:
    """`trainee` across the job: its model wrapped in DistributedDataParallel, its batches sharded."""
    wrapped = DistributedTrainee(**{f.name: getattr(trainee, f.name) for f in dataclasses.fields(trainee)})
    wrapped.process = process
    wrapped.fast = None  # its hand-written backward would bypass DDP's gradient all-reduce
    wrapped.model = DistributedDataParallel(trainee.model, device_ids=[device.index] if device.type == "cuda" else None)
    wrapped.batches = Shard(trainee.batches, process)
    return wrapped


def failure(e: BaseException, process: Process) -> str | None:
    """For a collective that failed because another process of the job is gone: who, and the gist of
    the backend's error; None for any other error."""
    if not _lost_peer(e):
        return None
    return f"{process}: the job lost {_who_failed(process)} ({_first_line(e)})"


def _lost_peer(e: BaseException) -> bool:
    """Whether a collective failed because another process of the job is gone."""
    text = str(e).lower()
    return isinstance(e, dist.DistError) or any(
        words in text for words in ("connection closed", "connection reset", "broken pipe", "gloo", "nccl"))


def _first_line(e: BaseException) -> str:
    """The gist of a backend's error: its first sentence, without the source location in brackets."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    text = text.splitlines()[0]
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". ")[0].rstrip(".")[:200]


def _who_failed(process: Process) -> str:
    """`rank 1 (pid 4242), which ended` when a process on this machine has ended, else `another process`."""
    try:
        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=2))
        here = socket.gethostname()
        for rank in range(process.world_size):
            if rank == process.rank:
                continue
            host, _, pid = store.get(f"mnistlab/pid/{rank}").decode().rpartition(":")
            if host == here and not process_alive(int(pid)):
                return f"rank {rank} (pid {pid}), which ended"
    except Exception:  # noqa: BLE001 - naming the rank is a courtesy; the error is reported either way
        pass
    return "another process"
