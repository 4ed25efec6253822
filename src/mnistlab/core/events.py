"""Events: what the training loop says while it runs, as plain JSON objects.

Every surface reads the same stream: the command line prints lines made from
it (`line`), `train --json` and the Python API's `on_event=` receive the
objects, the run directory keeps them in `events.jsonl` (one object a line,
appended as they happen), and another process follows that file live
(`runs.follow`, `mnistlab runs RUN --follow`, the page).

Every event has "type", "time" (Unix seconds) and "run" (the run directory).
The types, and what else each holds:

    started   config, epochs (planned in all), epoch (already committed), steps_per_epoch,
              device, dataset, data_source, members, world_size, resumed, mnistlab (version)
    progress  epoch, step (done in this epoch), steps, loss (running mean of this epoch),
              steps_per_second
    epoch     epochs (planned), row: {epoch, train_loss, val_accuracy, test_accuracy, lr, seconds}
    hint      epoch, message: something the user should know and can act on
    note      message: how the run goes about its work (the device, the data, a CUDA graph)
    ended     status (finished | target | stopped | diverged | failed), epochs (committed), message
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import IO, Any, Callable

from ..base.config import Config, recipe_line
from ..base.errors import WriteError
from ..base.files import json_text

EVENTS = "events.jsonl"
TYPES = ("started", "progress", "epoch", "hint", "note", "ended")
ENDINGS = ("finished", "target", "stopped", "diverged", "failed")
PROGRESS_SECONDS = 0.25  # between two progress events at least: the page's loss curve moves four times a second
FLUSH_SECONDS = 0.5  # an event reaches events.jsonl within this long

Emit = Callable[[dict[str, Any]], None]


def event(kind: str, run: str | os.PathLike, **fields: Any) -> dict[str, Any]:
    """One event: its type, the time, the run, then its own fields."""
    assert kind in TYPES, kind
    return {"type": kind, "time": time.time(), "run": str(run), **fields}


def ignore(event: dict[str, Any]) -> None:
    """The sink of a run nobody watches."""


# ---------------------------------------------------------------------------
# For people: the line each event stands for

# The words of the lines, in the languages the course is taught in (French: the course's, with
# `inspect --lang fr`'s vocabulary: "exactitude" for accuracy).
WORDS = {
    "en": {"epoch": "epoch", "train loss": "train loss", "val acc": "val acc", "test acc": "test acc",
           "run": "run", "resuming": "resuming after epoch", "processes": "processes", "device": "device",
           "data": "data"},
    "fr": {"epoch": "époque", "train loss": "perte d'entraînement", "val acc": "exactitude val",
           "test acc": "exactitude test", "run": "dossier", "resuming": "reprise après l'époque",
           "processes": "processus", "device": "appareil", "data": "données"},
}
LANGUAGES = tuple(WORDS)


def epoch_line(row: dict[str, Any], epochs: int, lang: str = "en") -> str:
    """`epoch 2/5  train loss 0.9025  test acc 84.12%  0.71s`: the number the notebook prints, and more."""
    w = WORDS[lang]
    parts = [f"{w['epoch']} {row['epoch']:>{len(str(epochs))}}/{epochs}", f"{w['train loss']} {row['train_loss']:.4f}"]
    if row.get("val_accuracy") is not None:
        parts.append(f"{w['val acc']} {100 * row['val_accuracy']:.2f}%")
    if row.get("test_accuracy") is not None:
        parts.append(f"{w['test acc']} {100 * row['test_accuracy']:.2f}%")
    parts.append(f"{row['seconds']:.2f}s")
    return "  ".join(parts)


def progress_line(e: dict[str, Any], epochs: int, started: float) -> str:
    """`epoch 2/6  40% (188/469 batches)  loss 0.6213  41s`."""
    return (f"epoch {e['epoch']}/{epochs}  {100 * e['step'] // e['steps']:3d}% ({e['step']}/{e['steps']} batches)  "
            f"loss {e['loss']:.4f}  {e['time'] - started:.0f}s")


def lines(e: dict[str, Any], lang: str = "en") -> list[str]:
    """What a person reads for event `e` (progress events have none here: commands/progress.py shows them).
    `lang`: en or fr, for the run's own lines (a hint or a note is said in English)."""
    kind, w = e["type"], WORDS[lang]
    if kind == "started":
        where = f"{w['run']}: {e['run']}"
        if e["resumed"]:
            where += f" ({w['resuming']} {e['epoch']}/{e['epochs']})"
        if e["world_size"] > 1:
            where += f" ({e['world_size']} {w['processes']})"
        out = [where]
        if not e["resumed"]:
            out.append(recipe_line(Config.from_dict(e["config"]), lang))
        return [*out, f"{w['device']}: {e['device']}", f"{w['data']}: {e['dataset']} ({e['data_source']})"]
    if kind == "epoch":
        return [epoch_line(e["row"], e["epochs"], lang)]
    if kind in ("hint", "note") or (kind == "ended" and e["message"]):
        return [e["message"]]
    return []


# ---------------------------------------------------------------------------
# events.jsonl: append-only, outside the per-epoch transaction

class EventLog:
    """Appends events to a run's events.jsonl, flushed within FLUSH_SECONDS of each event.

    A kill loses at most the events of the last half second; it never touches
    what the run committed. A full disk stops the log (one note is kept in
    memory for the caller) but never the training.
    """

    def __init__(self, path: Path):
        self.path = path
        self._file: IO[str] | None = None
        self._last_flush = 0.0
        self.failed: str | None = None

    def write(self, e: dict[str, Any]) -> None:
        if self.failed is not None:
            return
        try:
            if self._file is None:
                self._file = open(self.path, "a", encoding="utf-8")
            self._file.write(json_text(e, indent=None) + "\n")
            now = time.monotonic()
            # Progress events come at most every PROGRESS_SECONDS, so flushing on each is as cheap as batching;
            # the others (epoch ends, the end) are what a follower waits for.
            if e["type"] != "progress" or now - self._last_flush >= FLUSH_SECONDS:
                self._file.flush()
                self._last_flush = now
        except OSError as error:
            self.failed = str(WriteError(str(self.path), error))
            self.close()

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None


def parse_line(text: str) -> dict[str, Any] | None:
    """An event from one line of events.jsonl, or None for a line that is not one (cut off by a kill)."""
    try:
        e = json.loads(text)
    except ValueError:
        return None
    if not (isinstance(e, dict) and e.get("type") in TYPES and isinstance(e.get("time"), (int, float))
            and math.isfinite(e["time"])):
        return None
    return e


def read(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete event in an events.jsonl file (none if there is no such file)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return []
    return [e for e in map(parse_line, lines[:-1]) if e is not None]  # the last piece has no newline yet
