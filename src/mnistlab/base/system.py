"""The operating system's limits and signals that long-running commands live with.

`allow_open_files` raises this process's open-file limit as far as the system lets it (a sweep's group
holds two files a run; the server one socket a connection). `end_with_parent` has Linux stop this process
when the one that started it dies, however it dies: torchrun's ranks, the server's workers.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
from typing import Iterator

try:
    import resource
except ImportError:  # Windows
    resource = None

PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent ends


def allow_open_files(wanted: int) -> int:
    """Raise this process's limit on open files towards `wanted` (up to the hard limit the system sets) and
    return the limit now in force. macOS gives processes 256 by default, far below its hard limit."""
    if resource is None:  # Windows: no such limit to speak of
        return max(wanted, 8192)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return wanted if soft == resource.RLIM_INFINITY else soft


def end_with_parent() -> bool:
    """Ask Linux to send this process SIGTERM when its parent ends, even by SIGKILL (a parent killed so cannot
    pass a signal on). SIGTERM stops mnistlab's commands cleanly. Returns False when the parent is already
    gone (the caller then ends itself); elsewhere than Linux there is no such request, and True."""
    if not sys.platform.startswith("linux"):
        return True
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    return os.getppid() == parent and parent != 1


def process_alive(pid: int | None) -> bool:
    """Whether process `pid` runs (a zombie, ended but not yet reaped by its parent, does not)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: it exists
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) said it exists


STOPS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def signals_noted() -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM noted, not acted on, while the block runs: yields the list of those that arrive.

    Noted in Python, not by the thread's signal mask: the kernel hands a process's signal to any thread
    that does not block it (torch's and tqdm's threads among them), and Python then runs its handler in
    the main thread at once. So for the block each stop signal's handler is one that notes it, and the
    handlers are put back after it. Outside the main thread, where handlers cannot be set, the block runs
    as it is (and nothing is noted)."""
    arrived: list[int] = []
    try:
        previous = {stop: signal.signal(stop, lambda signum, frame: arrived.append(signum)) for stop in STOPS}
    except ValueError:  # not the main thread
        yield arrived
        return
    try:
        yield arrived
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM held back until the block is done, then delivered, once each: a commit and the
    files derived from it happen whole (a kill -9 cannot be held back; the readers of a run cope with it)."""
    arrived: list[int] = []
    try:
        with signals_noted() as arrived:
            yield
    finally:
        for stop in dict.fromkeys(arrived):
            signal.raise_signal(stop)
