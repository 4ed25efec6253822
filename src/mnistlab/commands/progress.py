"""Progress within an epoch: a bar on a terminal, a plain line now and then in a log.

On a terminal the bar shows the running loss. Written to a file or a pipe, a
bar is noise, and silence for minutes looks like a hang: there a plain line
is written every tenth of the epoch or every `interval` seconds, whichever
comes later, so a long epoch shows life and a short one adds no lines.
Reading the running loss waits for the device, so it is read only when shown.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

import torch

# Seconds between plain lines at least; MNISTLAB_PROGRESS_SECONDS overrides it (tests, busy logs).
INTERVAL = 30.0
BAR_EVERY = 50  # steps between bar refreshes (each reads the loss from the device)


def interval() -> float:
    try:
        return float(os.environ.get("MNISTLAB_PROGRESS_SECONDS", INTERVAL))
    except ValueError:
        return INTERVAL


class Lines:
    """Plain progress lines through `log`: `epoch 2/6  40% (188/469 batches)  loss 0.6213  41s`."""

    def __init__(self, epoch: int, epochs: int, n_steps: int, log: Callable[[str], None],
                 every: float | None = None, clock: Callable[[], float] = time.perf_counter):
        self.epoch, self.epochs, self.n_steps, self.log, self.clock = epoch, epochs, n_steps, log, clock
        self.every = interval() if every is None else every
        self.start = self.last_time = clock()
        self.last_step = 0

    def update(self, i: int, total: torch.Tensor) -> None:
        done = i + 1
        if done == self.n_steps or done - self.last_step < self.n_steps / 10:
            return  # the epoch line itself follows the last step
        now = self.clock()
        if now - self.last_time < self.every:
            return
        self.last_time, self.last_step = now, done
        self.log(f"epoch {self.epoch}/{self.epochs}  {100 * done // self.n_steps:3d}% ({done}/{self.n_steps} "
                 f"batches)  loss {float(total) / done:.4f}  {now - self.start:.0f}s")

    def close(self) -> None:
        pass


class Bar:
    """tqdm's bar on stderr, refreshed every BAR_EVERY steps."""

    def __init__(self, epoch: int, epochs: int, n_steps: int):
        from tqdm import tqdm

        self.n_steps = n_steps
        self.bar = tqdm(total=n_steps, desc=f"epoch {epoch}/{epochs}", leave=False, file=sys.stderr, unit="batch")

    def update(self, i: int, total: torch.Tensor) -> None:
        if i % BAR_EVERY == BAR_EVERY - 1 or i == self.n_steps - 1:
            self.bar.set_postfix(loss=f"{float(total) / (i + 1):.4f}", refresh=False)
            self.bar.update(i + 1 - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def for_epoch(epoch: int, epochs: int, n_steps: int, log: Callable[[str], None]) -> Bar | Lines:
    """The bar when stderr is a terminal, else plain lines through `log`."""
    if sys.stderr.isatty():
        return Bar(epoch, epochs, n_steps)
    return Lines(epoch, epochs, n_steps, log)


class Count:
    """Progress through a known number of items (e.g. `mnistlab predict` on a folder): tqdm's bar on a
    terminal when it takes more than a second, else a plain line every `interval()` seconds, so that a
    short job adds no line and a long one shows life:
    `predict: 12000/28000 images (42%), 1530 images/s`."""

    def __init__(self, total: int, task: str, unit: str, log: Callable[[str], None], every: float | None = None,
                 clock: Callable[[], float] = time.perf_counter, terminal: bool | None = None):
        self.total, self.task, self.unit, self.log, self.clock = total, task, unit, log, clock
        self.every = interval() if every is None else every
        self.start = self.last = clock()
        self.done = 0
        self.bar = None
        if sys.stderr.isatty() if terminal is None else terminal:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, desc=task, leave=False, file=sys.stderr, delay=1.0)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if now - self.last < self.every or self.done >= self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        self.log(f"{self.task}: {self.done}/{self.total} {self.unit} ({100 * self.done // self.total}%), "
                 f"{rate:.0f} {self.unit}/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
