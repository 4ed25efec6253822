"""What the command line shows of a run's events: their lines, and progress within an epoch.

On a terminal the progress is a bar with the running loss. Written to a file
or a pipe, a bar is noise, and silence for minutes looks like a hang: there a
plain line is written every tenth of the epoch or every `interval` seconds,
whichever comes later, so a long epoch shows life and a short one adds no lines.
"""

from __future__ import annotations

import os
import sys
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
