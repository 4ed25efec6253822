"""How many CPU threads torch computes with: chosen for the work and the machine, not inherited.

torch starts with one thread per core of the machine (or OMP_NUM_THREADS).
For the notebook's network that is the wrong choice twice over. Its steps are
so small (29 million floating-point operations at batch 64) that splitting
each operation over two threads saves less than the threads cost to meet; and
when another process keeps a core busy, every operation that waits for its
second thread waits for that core: on the shared 2-core development machine
the seed recipe's epoch took 0.98 s with one thread and 3.5 s with two
(medians, load 2 to 5), 1.9 s and 25 s beside one more busy process
(docs/cpu-speed.md has these measurements and those behind the numbers below).
On a shared login node or in a Slurm job, the machine's core count can also
exceed the CPUs the job owns.

The choice (`choose_threads`), first that applies:
1. `--threads N` (`requested`): N.
2. OMP_NUM_THREADS, when set: the user's or the job script's choice.
3. Otherwise, of the CPUs this process may use (`cpu_budget`: its affinity
   mask, as set by taskset, cpusets or Slurm's binding; SLURM_CPUS_PER_TASK; a
   container's CPU quota): one thread for a step smaller than
   SMALL_STEP_FLOPS, else all of them, but no more than the machine's load
   leaves free.
When the machine's load average leaves fewer free cores than that (rounded),
it uses only the free cores, down to one, unless the count was asked for; and
the device line of the run says so and what it does about it (`note`, shown by
devices.describe: "cpu (1 thread; the machine is busy: load 3.1 on 2 CPUs;
steps will be slower than on a quiet machine)").
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import torch

# Steps below this many floating-point operations (forward and backward) run on one thread: the seed
# recipe's 29 MFLOP step was slower on two threads by the median of every measurement, at loads from
# 0.1 to 9 (and unpredictable: 0.47, 3.3, 1.4 s against 0.57 s at 0.1), while large products run twice
# as fast on two idle cores. Where between the two lines cross on a quiet
# machine could not be measured on the shared one (docs/cpu-speed.md, `cpu_speed.py --crossover`).
SMALL_STEP_FLOPS = 200e6
MAX_THREADS = 1024
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")  # cgroup v2: "<quota> <period>" or "max <period>"


def plural_threads(n: int) -> str:
    """`1 thread`, `2 threads`."""
    return f"{n} thread{'' if n == 1 else 's'}"


def _positive_int(text: str | None) -> int | None:
    """The first number of an OMP_NUM_THREADS-style value ("4", "4,2" for nested levels); None if not one."""
    try:
        value = int((text or "").split(",")[0].strip())
    except ValueError:
        return None
    return value if value > 0 else None


def _affinity() -> int:
    """The CPUs this process may run on (its affinity mask); the machine's count where there is no mask."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cgroup_quota(path: Path = CGROUP_CPU_MAX) -> int | None:
    """The CPUs a cgroup v2 quota allows (docker --cpus 1.5: 2), or None without a quota."""
    try:
        quota, period = path.read_text().split()[:2]
        return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError, ZeroDivisionError):
        return None  # "max" (no quota), no cgroup v2, or not readable


def cpu_budget(environ: Mapping[str, str] | None = None, affinity: int | None = None,
               quota: int | None = None) -> tuple[int, str]:
    """The number of CPUs this process may use, and where that number comes from.

    The smallest of its affinity mask, SLURM_CPUS_PER_TASK (a Slurm job owns
    that many per task even where it does not bind them) and the CPU quota of
    its container. `affinity` and `quota` default to this process's.
    """
    environ = os.environ if environ is None else environ
    limits = [(affinity if affinity is not None else _affinity(), "affinity mask")]
    slurm = _positive_int(environ.get("SLURM_CPUS_PER_TASK"))
    if slurm is not None:
        limits.append((slurm, f"SLURM_CPUS_PER_TASK={slurm}"))
    quota = quota if quota is not None else _cgroup_quota()
    if quota is not None:
        limits.append((quota, "CPU quota"))
    return min(limits, key=lambda limit: limit[0])


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    cpus: int  # CPUs this process may use
    reason: str  # why this many, for people
    note: str | None = None  # when the machine is too busy for it, or it exceeds the CPUs: what and what to do


def load_average() -> float | None:
    """The machine's 1-minute load average (other processes' demand for its cores); None where unknown."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # not on this platform
        return None


def choose_threads(requested: int | None = None, step_flops: float | None = None, *,
                   environ: Mapping[str, str] | None = None, cpus: tuple[int, str] | None = None,
                   load: float | None = -1.0) -> ThreadChoice:
    """The number of threads for work whose steps cost `step_flops` (None: unknown, taken as small).

    `environ`, `cpus` (as cpu_budget returns it) and `load` (the 1-minute load
    average; None where the platform has none) default to this process's.
    """
    environ = os.environ if environ is None else environ
    count, where = cpus if cpus is not None else cpu_budget(environ)
    load = load_average() if load == -1.0 else load
    omp = _positive_int(environ.get("OMP_NUM_THREADS"))
    if requested is not None:
        threads, reason, asked = requested, f"--threads {requested}", True
    elif omp is not None:
        threads, reason, asked = omp, f"OMP_NUM_THREADS={omp}", True
    elif step_flops is None or step_flops < SMALL_STEP_FLOPS:
        shown = f" ({step_flops / 1e6:.0f} MFLOP)" if step_flops is not None else ""
        threads, reason, asked = 1, f"one thread: the fastest for small steps{shown}", False
    else:
        threads, reason, asked = count, f"one per CPU this process may use ({where})", False
    threads = min(threads, MAX_THREADS)
    cpus_text = f"{count} CPU{'' if count == 1 else 's'}"
    if threads > count:
        return ThreadChoice(threads, count, reason, f"{reason}, on {cpus_text} ({where}); threads that wait for "
                            f"a CPU slow every step; --threads {count} may be faster")
    fits = int(count - load + 0.5) if load is not None else threads  # threads the free cores hold, rounded
    if fits >= threads:
        return ThreadChoice(threads, count, reason)
    busy = f"the machine is busy: load {load:.1f} on {cpus_text}"
    fewer = max(1, fits)
    if asked:
        note = (f"{reason}, but {busy}; threads that wait for a busy core slow every step"
                + (f"; --threads {fewer} may be faster" if fewer < threads else ""))
    elif fewer < threads:
        note = f"not {threads}, as {busy}; --threads N to choose"
        threads, reason = fewer, f"the free {'core' if fewer == 1 else 'cores'} of {cpus_text}"
    else:
        note = f"{busy}; steps will be slower than on a quiet machine"
    return ThreadChoice(threads, count, reason, note)


_current: ThreadChoice | None = None  # the last choice use_threads applied


def use_threads(requested: int | None = None, step_flops: float | None = None) -> ThreadChoice:
    """Choose (choose_threads) and set torch's thread count; `note()` then says why, if there is a reason."""
    global _current
    _current = choose_threads(requested, step_flops)
    torch.set_num_threads(_current.threads)
    return _current


@contextlib.contextmanager
def using_threads(requested: int | None = None, step_flops: float | None = None) -> Iterator[ThreadChoice]:
    """`use_threads` for the duration of a block; after it, torch's count as it was and the note as it was
    (for a caller whose process goes on: the tests, a notebook calling the CLI's main)."""
    global _current
    before, previous = torch.get_num_threads(), _current
    try:
        yield use_threads(requested, step_flops)
    finally:
        torch.set_num_threads(before)
        _current = previous


def note() -> str | None:
    """The note of the thread count in use (`ThreadChoice.note`), or None: none, or the count set since."""
    if _current is None or _current.threads != torch.get_num_threads():
        return None
    return _current.note
