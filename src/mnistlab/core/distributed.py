"""Several processes: what torchrun tells each one, and the process group they share.

`torchrun --nproc-per-node N -m mnistlab ...` starts N copies of the command
with RANK, LOCAL_RANK and WORLD_SIZE in their environment; nothing else in
mnistlab launches processes. `mnistlab sweep` uses the group only to wait for
every process at the end (each trains its own share of the configurations);
`mnistlab train` trains one model across them with DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from ..base.errors import MnistlabError, RunError, UsageError

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
        # Who is who, so that a process whose peer died can say which one (see _who_failed).
        process = launched()
        if process is not None:
            dist.distributed_c10d._get_default_store().set(f"mnistlab/pid/{process.rank}",
                                                           f"{socket.gethostname()}:{os.getpid()}")


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


class RankRun:
    """The run as `training.fit` sees it on each rank: rank 0 commits into the run directory (with the
    world size), the others only remember what was committed."""

    def __init__(self, path, config, state, process: Process, run=None):
        self.path, self.state, self.process, self.run = path, state, process, run
        self.config = config.replace(cuda_graph=False)  # a graph-captured step would bypass DDP's hooks

    @property
    def epoch(self) -> int:
        return self.state["epoch"] if self.state else 0

    @property
    def rows(self) -> list:
        return list(self.state["rows"]) if self.state else []

    def kept(self) -> str:
        from .runs import epochs_text

        if not self.epoch:
            return f"no epoch was completed; start it again with: torchrun ... -m mnistlab train --resume {self.path}"
        return (f"{epochs_text(self.epoch)} kept in {self.path}; continue with: torchrun ... -m mnistlab train "
                f"--resume {self.path}")

    def commit(self, epoch, rows, training, meta, device, world_size=None) -> None:
        if self.run is not None:
            self.run.commit(epoch, rows, training, meta, device, world_size=self.process.world_size)
            self.state = self.run.state
        else:
            self.state = {"epoch": epoch, "rows": rows}


def _trainee_class():
    from dataclasses import dataclass as _dataclass

    import torch.distributed as dist

    from .evaluation import predictions
    from .training import Trainee

    @_dataclass
    class DistributedTrainee(Trainee):
        """A trainee whose model is wrapped in DistributedDataParallel: losses and accuracies over all ranks."""

        process: Process | None = None

        def state(self):
            wrapped, self.model = self.model, self.model.module  # the network's own keys, not DDP's `module.`
            try:
                return super().state()
            finally:
                self.model = wrapped

        def reduce(self, mean_loss: torch.Tensor) -> torch.Tensor:
            total = mean_loss.detach().clone()
            dist.all_reduce(total)  # a sum (gloo has no average); equal shards, so the mean of the means
            return total / self.process.world_size

        def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
            r, n = self.process.rank, self.process.world_size
            mine = x.tensor_split(n)[r], y.tensor_split(n)[r]
            correct = (predictions(self.model.module, mine[0]) == mine[1]).sum(dtype=torch.int64).reshape(1)
            dist.all_reduce(correct)
            return int(correct) / len(y)

    return DistributedTrainee


def train(process: Process, config=None, *, resume=None, epochs: int | None = None, out=None, data_dir=None,
          log=lambda line: None, progress: bool = False):
    """`mnistlab train` under torchrun: one network across the processes; rank 0 gets the RunResult, the
    others None. `config` starts a new run (in `out`), `resume` continues one."""
    if config is not None and config.ensemble > 1:
        raise UsageError("under torchrun, train trains one network across the processes; drop --ensemble "
                         "(or train ensembles with mnistlab sweep, whose processes each train their share)")
    if config is not None:
        check_split(config.batch_size, 0, True, process.world_size)  # early, before any process waits
    join(backend())
    failed = False
    try:
        with contextlib.ExitStack() as stack:
            run = None
            if process.leader:
                opened = _start(process, config, resume, epochs, out, stack, log)
                run = opened[0]
                payload = (str(run.path), run.config.to_dict(), run.state, opened[1])
            payload = broadcast(payload if process.leader else None)
            if payload is None:
                raise RunError(f"{process}: stopped, rank 0 could not start the run")
            return _train(process, payload, run, data_dir, log if process.leader else (lambda line: None), progress)
    except BaseException:
        failed = True
        raise
    finally:
        if not failed:
            leave()  # after a failure the others may be gone: leaving would wait for them


def _start(process, config, resume, epochs, out, stack, log):
    """Rank 0: the run directory, created or opened and locked, and the data folder to use."""
    from . import runs
    from .training import _recorded_data_dir, recipe_line

    try:
        if resume is not None:
            run = stack.enter_context(runs.open_run(resume))
            if epochs is not None:
                run.set_epochs(epochs)
            log(f"run: {run.path} (resuming after epoch {run.epoch}/{run.config.epochs}, {process.world_size} processes)")
            recorded = _recorded_data_dir(run.state["meta"].get("data_dir"), log) if run.state else None
        else:
            config = config.validated()
            run = stack.enter_context(runs.create(out if out is not None else runs.default_path(config), config))
            log(f"run: {run.path} ({process.world_size} processes)")
            log(recipe_line(config))
            recorded = None
    except BaseException:
        broadcast(None)  # the others stop too
        raise
    return run, recorded


def _train(process, payload, run, data_dir, log, progress):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from . import runs
    from ..base.config import Config
    from ..base.devices import describe, select_device
    from ..base.errors import Interrupted
    from .training import RunResult, build, checkpoint_meta, fit, load_splits

    path, config_dict, state, recorded = payload
    config = Config.from_dict(config_dict)
    rank_run = RankRun(Path(path), config, state, process, run)
    data_dir = data_dir if data_dir is not None else recorded
    try:
        device = local_device(select_device(config.device), process)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        log(f"device: {describe(device)} on each of {process.world_size} processes")
        if not process.leader:
            dist.barrier()  # rank 0 fetches and caches the data first; the others then read its cache
        splits = load_splits(config, data_dir, device, progress and process.leader)
        if process.leader:
            dist.barrier()
            log(f"data: {splits.dataset.spec.name} ({splits.dataset.source})")
        check_split(config.batch_size, len(splits.y), config.drop_last, process.world_size)
        trainee = build(config, splits, device)
        meta = checkpoint_meta(config, trainee, splits.dataset, data_dir)
        if state:
            trainee.restore(state)
        else:
            rank_run.commit(0, [], trainee.state(), meta, str(device))
        trainee = _trainee_class()(**{**vars(trainee), "process": process})
        trainee.model = DistributedDataParallel(trainee.model, device_ids=[device.index] if device.type == "cuda" else None)
        trainee.batches = Shard(trainee.batches, process)
        rows = fit(rank_run, trainee, splits, device, meta, config.epochs, log, progress and process.leader)
    except KeyboardInterrupt:
        raise Interrupted(f"{process}: interrupted; {rank_run.kept()}") from None
    except (RuntimeError, dist.DistError) as e:
        if not _lost_peer(e):
            raise
        raise RunError(f"{process}: the job lost {_who_failed(process)} ({_first_line(e)}); {rank_run.kept()}") from None
    except MnistlabError as e:
        e.args = (f"{process}: {e}",)  # every process may say it: each line names its rank
        raise
    if not process.leader:
        return None
    return RunResult(rank_run.path, runs.summary(config, rank_run.state), trainee.model.module, rows)


def _lost_peer(e: BaseException) -> bool:
    """Whether a collective failed because another process of the job is gone."""
    import torch.distributed as dist

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
        import torch.distributed as dist

        store = dist.distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=2))
        here = socket.gethostname()
        for rank in range(process.world_size):
            if rank == process.rank:
                continue
            host, _, pid = store.get(f"mnistlab/pid/{rank}").decode().rpartition(":")
            if host == here and not _alive(int(pid)):
                return f"rank {rank} (pid {pid}), which ended"
    except Exception:  # noqa: BLE001 - naming the rank is a courtesy; the error is reported either way
        pass
    return "another process"


def _alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie, ended but not yet reaped by torchrun, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True
