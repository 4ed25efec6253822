"""What the command line shows of a run's events: their lines, and progress within an epoch.

On a terminal the progress is a bar with the running loss. Written to a file
or a pipe, a bar is noise, and silence for minutes looks like a hang: there a
plain line is written every tenth of the epoch or every `interval` seconds,
whichever comes later, so a long epoch shows life and a short one adds no lines.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable

from ..core.events import lines, progress_line

# Seconds between plain lines at least; MNISTLAB_PROGRESS_SECONDS overrides it (tests, busy logs).
INTERVAL = 30.0


def interval() -> float:
    try:
        return float(os.environ.get("MNISTLAB_PROGRESS_SECONDS", INTERVAL))
    except ValueError:
        return INTERVAL


class Printer:
    """An `on_event` for the command line: each event's lines through `log`, progress as a bar on a
    terminal (stderr) or as plain lines through `log` now and then.

    `endings`: say how a run ended (following another process's run); a command that trains says it
    itself, as its result or its error.
    """

    def __init__(self, log: Callable[[str], None], bar: bool | None = None, every: float | None = None,
                 endings: bool = False):
        self.log, self.endings = log, endings
        self.use_bar = sys.stderr.isatty() if bar is None else bar
        self.every = interval() if every is None else every
        self.bar = None
        self.epoch_start = 0.0
        self.last_time = 0.0
        self.last_step = 0

    def __call__(self, e: dict[str, Any]) -> None:
        if e["type"] == "progress":
            self._progress(e)
            return
        if e["type"] in ("epoch", "ended"):
            self._close()
        if e["type"] == "ended" and not self.endings:
            return
        for text in lines(e):
            self.log(text)

    def _progress(self, e: dict[str, Any]) -> None:
        if self.use_bar:
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=e["steps"], desc=f"epoch {e['epoch']}/{e['epochs']}", leave=False,
                                file=sys.stderr, unit="batch")
            self.bar.set_postfix(loss=f"{e['loss']:.4f}", refresh=False)
            self.bar.update(e["step"] - self.bar.n)
            return
        if self.last_step == 0 and self.last_time == 0.0:
            # The epoch began one interval of steps before its first progress event.
            self.epoch_start = e["time"] - e["step"] / max(e["steps_per_second"], 1e-9)
            self.last_time = self.epoch_start
        if e["step"] - self.last_step < e["steps"] / 10 or e["time"] - self.last_time < self.every:
            return
        self.last_time, self.last_step = e["time"], e["step"]
        self.log(progress_line(e, e["epochs"], self.epoch_start))

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.last_time, self.last_step = 0.0, 0


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
