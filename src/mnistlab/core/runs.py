"""The run directory: one folder per training run, written as a transaction.

    config.json          the configuration, stored once (written when the run is created)
    state.pt             the commit: after each epoch, one atomic write of everything the
                         run needs to go on (weights, optimiser, schedule, RNG) and to
                         rebuild the files below (metric rows, checkpoint metadata)
    metrics.csv          derived: one row per committed epoch
    model.safetensors    derived: the weights of the last committed epoch ...
    model.json           ... and what is needed to rebuild and use them
    summary.json         derived: the run at a glance
    events.jsonl         what the training said as it went (core/events.py); append-only,
                         outside the transaction: losing its tail loses nothing else
    .lock                held by the one process writing the run, removed when it is done

`Run` is the only writer. Every commit has an id ("<epoch>-<8 hex digits>"),
copied into model.json and summary.json when they are derived from it, so a
reader can tell whether they belong to the commit: a kill between the commit
and its derived files leaves them one epoch behind, and readers then use the
commit (`checkpoint.load_checkpoint`, `info`) and re-derive the files when
nobody holds the run. Epoch 0 is committed too, before training starts, so a
run stopped during its first epoch resumes from the very start (or
`train --out` over it starts it again).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import math
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from .. import __version__
from ..base import names
from ..base.config import Config, ConfigError
from ..base.errors import CheckpointError, RunError, WriteError, shown
from ..base.system import signals_held
from ..base.files import (
    make_dirs,
    open_regular,
    read_json,
    remove_stale_temps,
    write_bytes,
    write_json,
    write_text,
)
from .checkpoint import (
    META,
    STATE,
    WEIGHTS,
    check_tensors,
    model_metrics,
    read_state_file,
    save_checkpoint,
    validate_meta,
)
from .events import EVENTS, EventLog, parse_line
from .tensorboard import TensorBoard

CONFIG = "config.json"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
LOCK = ".lock"
FIGURES = "figures"
# What a run directory holds: nothing else may be written over these (export refuses to).
RUN_FILES = (CONFIG, STATE, METRICS, WEIGHTS, META, SUMMARY, EVENTS, LOCK)
METRIC_FIELDS = ("epoch", "train_loss", "val_accuracy", "test_accuracy", "lr", "seconds")
STATE_FORMAT = 2
STALLED = 0.02  # a loss within 2% of ln(classes), what uniform guessing scores, has learned nothing
FEW_STEPS = 100  # fewer optimiser steps than this have not given a network time to learn
TINY_LR = 1e-4  # below it a stalled run's rate is the suspect: the notebook's 0.003 leaves ln(10) in one epoch


# ---------------------------------------------------------------------------
# The lock: an OS file lock, released by the OS when the process ends however it ends

def _try_lock(path: Path) -> int | None:
    """A locked file descriptor for `path`, or None when another process holds the lock.

    The holder removes the file when it is done, so the file we opened may be gone by the time we hold
    its lock; then nobody else would ever see our lock, and we try again on the file that is there now.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except ImportError:  # Windows: msvcrt locks a byte range instead, and open files are never removed
            import msvcrt

            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            except OSError:
                os.close(fd)
                return None
            return fd
        try:
            mine, there = os.fstat(fd), os.stat(path)
            if (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


_LOCK_LINE = re.compile(r"pid (\d+) on (.+?), since")  # the note _lock writes


def lock_holder(run_dir: Path) -> int | None:
    """The process id a running run's .lock names, when it runs on this machine."""
    try:
        match = _LOCK_LINE.match((run_dir / LOCK).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return None
    if not match or match.group(2) != socket.gethostname():
        return None
    return int(match.group(1))


def _holder(run_dir: Path) -> str:
    try:
        return (run_dir / LOCK).read_text(encoding="utf-8").strip() or "another process"
    except OSError:
        return "another process"


def is_running(run_dir: str | os.PathLike) -> bool:
    """True while some process holds the run's lock."""
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)  # a probe: never creates the file
    except OSError:
        return False
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except (ImportError, OSError):  # no flock here: only the lock's own file says it
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# Reading what a run holds, without writing anything

def read_config(run_dir: Path) -> Config:
    try:
        return Config.from_dict(read_json(run_dir / CONFIG))
    except FileNotFoundError:
        raise RunError(f"{run_dir}: not a run directory ({CONFIG} is missing)") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise RunError(f"{run_dir / CONFIG}: unreadable ({e})") from None
    except ConfigError as e:
        raise RunError(f"{run_dir / CONFIG}: {e}") from None


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """The last commit, or None when the run has none yet; RunError if it is damaged (`check_state`)."""
    path = run_dir / STATE
    try:
        state = read_state_file(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RunError(f"{path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:
        raise RunError(f"{path}: damaged resume state ({e}); the run cannot continue from it") from None
    version = state.get("format") if isinstance(state, dict) else None
    if not (isinstance(version, int) and version == STATE_FORMAT):
        raise RunError(f"{path}: not a resume state of this mnistlab version; the run cannot continue from it")
    try:
        check_state(state)
    except (ValueError, CheckpointError) as e:
        raise RunError(f"{path}: damaged resume state ({e}); the run cannot continue from it") from None
    return state


def _finite(value: Any, lo: float = -math.inf, hi: float = math.inf) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and lo <= value <= hi)


def check_row(row: Any, epoch: int) -> None:
    """ValueError unless `row` is metric row `epoch`: every field, finite numbers, accuracies in [0, 1]."""
    if not (isinstance(row, dict) and set(METRIC_FIELDS) <= set(row)):
        raise ValueError(f"metric row {epoch} is not a row of {', '.join(METRIC_FIELDS)}")
    if not (isinstance(row["epoch"], int) and not isinstance(row["epoch"], bool) and row["epoch"] == epoch):
        raise ValueError(f"metric row {epoch} says epoch {shown(row['epoch'])}")
    for name, lo, hi, optional in (("train_loss", -math.inf, math.inf, False), ("lr", 0, math.inf, False),
                                   ("seconds", 0, math.inf, False), ("val_accuracy", 0, 1, True),
                                   ("test_accuracy", 0, 1, True)):
        if not (_finite(row[name], lo, hi) or (optional and row[name] is None)):
            raise ValueError(f"metric row {epoch}: {name} is {shown(row[name])}")


def check_state(state: dict[str, Any]) -> None:
    """ValueError (or CheckpointError) unless a commit holds what resuming and publishing read.

    Checked here: the epoch and its metric rows, the checkpoint metadata (as in
    model.json), the weights' names, shapes, dtypes and values against the network
    that metadata describes, and the types of the optimiser, schedule and RNG
    entries. Whether these fit the run's own optimiser and schedule is checked when
    they are loaded into it (`training.Trainee.restore`).
    """
    epoch, rows = state.get("epoch"), state.get("rows")
    if not (isinstance(epoch, int) and not isinstance(epoch, bool) and epoch >= 0):
        raise ValueError(f"epoch is {shown(epoch)}")
    if not (isinstance(rows, list) and len(rows) == epoch):
        raise ValueError(f"{epoch} epochs but {len(rows) if isinstance(rows, list) else 'no'} metric rows")
    for k, row in enumerate(rows, 1):
        check_row(row, k)
    meta = validate_meta(state.get("meta"), "its checkpoint metadata")
    model = state.get("model")
    if not (isinstance(model, dict) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items())):
        raise ValueError("the weights are not a dictionary of named tensors")
    check_tensors({k: (list(v.shape), v.dtype) for k, v in model.items()}, meta["architecture"], "its weights",
                  meta.get("ensemble", 1))
    if any(v.is_floating_point() and not torch.isfinite(v).all() for v in model.values()):
        raise ValueError("the weights hold NaN or infinite values")
    optimizer = state.get("optimizer")
    members = meta.get("ensemble", 1)
    # An ensemble keeps one optimiser state per member: {"members": [...]}.
    optimizers = optimizer.get("members") if members > 1 and isinstance(optimizer, dict) else [optimizer]
    if not (isinstance(optimizers, list) and len(optimizers) == members and all(
            isinstance(o, dict) and isinstance(o.get("state"), dict) and isinstance(o.get("param_groups"), list)
            and all(isinstance(g, dict) for g in o["param_groups"]) for o in optimizers)):
        raise ValueError("the optimiser state is not a dictionary of state and param_groups")
    if not isinstance(state.get("schedule"), dict):
        raise ValueError("the schedule state is not a dictionary")
    rng = state.get("rng")
    if not (isinstance(rng, dict) and all(isinstance(rng.get(k), torch.Tensor) and rng[k].dtype == torch.uint8
                                          and rng[k].dim() == 1 for k in ("torch", "generator"))):
        raise ValueError("the random number generators' states are not byte tensors")
    if not (isinstance(state.get("device"), str) and isinstance(state.get("torch"), str)
            and _finite(state.get("world_size", 1), 1) and isinstance(state.get("world_size", 1), int)
            and isinstance(state.get("commit", ""), str)):
        raise ValueError("device, world_size, torch or commit is of the wrong type")
    diverged = state.get("diverged")
    if diverged is not None and not (isinstance(diverged, dict) and isinstance(diverged.get("message"), str)):
        raise ValueError("the divergence record is not a message")


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_FIELDS})
    return buf.getvalue()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of `metrics.csv` as numbers (None where a value was not measured)."""
    path = Path(run_dir) / METRICS

    def num(v: str | None) -> float | int | None:
        if v in ("", None):
            return None
        value = int(v) if v.isdigit() else float(v)
        if not math.isfinite(value):
            raise ValueError(v)
        return value

    try:
        with io.TextIOWrapper(open_regular(path), newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != METRIC_FIELDS:
                raise ValueError("unexpected columns")
            rows = [{k: num(row[k]) for k in METRIC_FIELDS} for row in reader]
    except FileNotFoundError:
        raise RunError(f"{run_dir}: not a run directory ({METRICS} is missing)") from None
    except (OSError, UnicodeDecodeError, ValueError, TypeError, csv.Error) as e:
        raise RunError(f"{path}: damaged ({e}); `mnistlab train --resume {run_dir}` rewrites it") from None
    if [r["epoch"] for r in rows] != list(range(1, len(rows) + 1)):
        raise RunError(f"{path}: damaged (epochs out of order); `mnistlab train --resume {run_dir}` rewrites it")
    return rows


def time_to_target(rows: list[dict[str, Any]], target: float) -> float | None:
    """Seconds of training until the first epoch whose validation accuracy (the test accuracy when there
    is no validation split) reached `target`; None if none did (evaluation time is not counted)."""
    elapsed = 0.0
    for row in rows:
        elapsed += row["seconds"]
        reached = row.get("val_accuracy") if row.get("val_accuracy") is not None else row.get("test_accuracy")
        if reached is not None and reached >= target:
            return elapsed
    return None


def learning_hint(rows: list[dict[str, Any]], classes: int, lr: float, steps_per_epoch: int | None = None,
                  batch_size: int | None = None) -> str | None:
    """One line when the run's latest epoch says the network is not learning, else None.

    Not learning: the loss is still within 2% of ln(classes), what a network that guesses every class
    alike scores; or it rose above the first epoch's. With fewer than FEW_STEPS optimiser steps taken
    (a small dataset in large batches), the advice is to take more of them, not to change the rate.
    """
    if not rows or classes < 2:
        return None
    first, last, guess = rows[0]["train_loss"], rows[-1], math.log(classes)
    if abs(last["train_loss"] - guess) <= STALLED * guess:
        said = (f"epoch {last['epoch']}: the training loss {last['train_loss']:.4f} is within 2% of ln({classes}) = "
                f"{guess:.4f}, what guessing every class alike scores: the network has learned nothing (lr {lr:g}); ")
        steps = steps_per_epoch * len(rows) if steps_per_epoch else None
        if lr < TINY_LR:
            return said + f"a rate this small barely moves the weights: try a higher --lr such as {lr * 100:g}"
        if steps is not None and steps < FEW_STEPS:
            return said + (f"it has taken only {steps} optimiser step{'s' * (steps != 1)} ({steps_per_epoch} an "
                           f"epoch, batches of {batch_size}): train more --epochs or use a smaller --batch-size")
        return said + (f"try a lower --lr such as {lr / 10:g} (too high a rate can silence every unit at once), "
                       "or another --seed")
    if last["train_loss"] > first:
        return (f"epoch {last['epoch']}: the training loss {last['train_loss']:.4f} rose above epoch 1's "
                f"{first:.4f}: the network is getting worse (lr {lr:g}); try a lower --lr such as {lr / 3:g}")
    return None


def summary(config: Config, state: dict[str, Any] | None) -> dict[str, Any]:
    """summary.json: the run at a glance (the full configuration is in config.json)."""
    rows = state["rows"] if state else []
    last = rows[-1] if rows else {}
    target = config.target_accuracy or None
    reached = time_to_target(rows, target) if target else None
    classes = len(state["meta"]["classes"]) if state else 0
    now = status(config, state)
    return {
        "recipe": config.recipe,
        "dataset": config.dataset,
        "epochs": len(rows),
        "total_epochs": config.epochs,
        "finished": now == "finished",
        "status": now,
        "train_loss": [r["train_loss"] for r in rows],
        "test_accuracy": last.get("test_accuracy"),
        "val_accuracy": last.get("val_accuracy"),
        "train_seconds": sum(r["seconds"] for r in rows),
        "target_accuracy": target,
        "time_to_target": reached,
        "hint": learning_hint(rows, classes, config.lr, state["meta"].get("steps_per_epoch") if state else None,
                              config.batch_size),
        "device": state["device"] if state else None,
        "world_size": state.get("world_size", 1) if state else None,
        "torch": state["torch"] if state else None,
        "mnistlab": __version__,
        "commit": state.get("commit") if state else None,
        "config": CONFIG,
    }


def status(config: Config, state: dict[str, Any] | None) -> str:
    """finished (every epoch, or the target reached), diverged, or resumable."""
    if state and state.get("diverged"):
        return "diverged"
    rows = state["rows"] if state else []
    if len(rows) == config.epochs or (config.target_accuracy
                                      and time_to_target(rows, config.target_accuracy) is not None):
        return "finished"
    return "resumable"


# ---------------------------------------------------------------------------
# Listing runs, and what each one holds

@dataclass
class RunInfo:
    """One line of `mnistlab runs`."""

    path: Path
    state: str  # finished, resumable, running, diverged or damaged
    recipe: str = ""
    dataset: str = ""
    epochs: int = 0
    total_epochs: int = 0
    test_accuracy: float | None = None
    train_seconds: float = 0.0
    problem: str = ""  # what is wrong (damaged), or why it stopped (diverged), or the learning hint
    usable: str = ""  # for a damaged run: what can still be used
    name: str = ""  # as listed: the path below the folder listed

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name or self.path.name, "path": str(self.path), "state": self.state,
                "recipe": self.recipe, "dataset": self.dataset, "epochs": self.epochs,
                "total_epochs": self.total_epochs, "test_accuracy": self.test_accuracy,
                "train_seconds": self.train_seconds,
                **({"problem": self.problem} if self.problem else {}),
                **({"usable": self.usable} if self.usable else {})}


def _published_model(path: Path) -> str:
    """What the run's model files hold, for people: `the model of epoch 20`, or '' when there is none."""
    try:
        meta = read_json(path / META)
        epochs = meta["metrics"]["epochs"]
        if not (path / WEIGHTS).is_file():
            return ""
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    return f"the model of epoch {epochs} ({WEIGHTS}) can still be evaluated, exported and served"


def info(run_dir: str | os.PathLike) -> RunInfo:
    """What a run holds and whether it is finished, resumable, diverged, being written now or damaged.

    Derived files that do not belong to the last commit are re-derived from it here, when nobody holds
    the run, so that the listing and the files never disagree.
    """
    path = Path(run_dir)
    running = is_running(path)
    try:
        config = read_config(path)
        state = read_state(path)
    except RunError as e:
        return RunInfo(path, "running" if running else "damaged", problem=str(e), usable=_published_model(path))
    if state is None and not running and (path / WEIGHTS).is_file():
        return RunInfo(path, "damaged", config.recipe, config.dataset, total_epochs=config.epochs,
                       problem=f"{STATE} is missing, so the run cannot be resumed", usable=_published_model(path))
    if state is not None and not running:
        _republish_if_stale(path, config, state)
    s = summary(config, state)
    problem = (state.get("diverged") or {}).get("message", "") if state else ""
    return RunInfo(path, "running" if running else s["status"], config.recipe, config.dataset, s["epochs"],
                   s["total_epochs"], s["test_accuracy"], s["train_seconds"], problem or s["hint"] or "")


def committed_rows(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The metric rows of the run's last commit; of a run whose commit cannot be read, its metrics.csv."""
    path = Path(run_dir)
    try:
        state = read_state(path)
    except RunError:
        state = None
    return state["rows"] if state else read_metrics(path)


def committed_summary(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """summary.json's content as the run's commit gives it (never read from summary.json); None if unreadable."""
    path = Path(run_dir)
    try:
        return summary(read_config(path), read_state(path))
    except RunError:
        return None


def _republish_if_stale(path: Path, config: Config, state: dict[str, Any]) -> None:
    """Re-derive the files of a run nobody holds when summary.json (written last) is not of its commit."""
    try:
        published = read_json(path / SUMMARY).get("commit")
    except (OSError, ValueError, AttributeError):
        published = None
    if published == state.get("commit"):
        return
    with contextlib.suppress(RunError, OSError):  # busy now, or read-only: the reader used the commit anyway
        run = Run(path, config, state, _fd=_lock(path))
        try:
            run.publish()
        finally:
            run.close()


def is_run(path: Path) -> bool:
    """Whether `path` is a run directory, whole or damaged: it holds a run's config, commit or model."""
    return any((path / name).is_file() for name in (CONFIG, STATE, META))


SWEEP_PLAN = "sweep.json"  # a sweep folder (commands/sweep.py) holds its runs in runs/
LADDER_PLAN = "ladder.json"  # a ladder's folder (commands/ladder.py) holds its runs side by side


def run_dirs(root: Path) -> list[Path]:
    """The run directories in `root`: `root` itself if it is one, else its sub-folders that are, and the runs
    of the folders of many runs among them (a sweep's `<sweep>/runs/*`, a ladder's `<ladder>/*`), sorted."""
    if is_run(root):
        return [root]
    if (root / SWEEP_PLAN).is_file():
        return sorted(q for q in (root / "runs").glob("*") if q.is_dir() and is_run(q))
    found = []
    for p in sorted(root.iterdir()):
        if not p.is_dir():
            continue
        if is_run(p):
            found.append(p)
        elif (p / SWEEP_PLAN).is_file() and (p / "runs").is_dir():
            found += sorted(q for q in (p / "runs").iterdir() if q.is_dir() and is_run(q))
        elif (p / LADDER_PLAN).is_file():
            found += sorted(q for q in p.iterdir() if q.is_dir() and is_run(q))
    return found


def list_runs(root: str | os.PathLike = "runs") -> list[RunInfo]:
    """Every run directory in `root` (see `run_dirs`), damaged ones included."""
    root = Path(root)
    try:
        if not root.is_dir():
            raise RunError(f"{root}: no such folder")
        folders = run_dirs(root)
    except OSError as e:
        raise RunError(f"{e.filename or root}: cannot read ({e.strerror or e})") from None
    base = root / "runs" if (root / SWEEP_PLAN).is_file() else root  # a sweep's runs by their own names
    listed = []
    for p in folders:
        entry = info(p)
        entry.name = str(p.relative_to(base)) if p != root else p.name
        listed.append(entry)
    return listed


def follow(run_dir: str | os.PathLike, poll: float = 0.1, wait: float = 0.0) -> Iterator[dict[str, Any]]:
    """The run's events from the start, then each as it is written, until the run ends.

    The run has ended when nobody holds it and its events.jsonl has no more to read. `wait`: seconds to
    wait for a run that has not started writing yet (a process just launched).
    """
    path = Path(run_dir) / EVENTS
    deadline = time.monotonic() + wait
    while not path.exists() and not is_running(run_dir) and time.monotonic() < deadline:
        time.sleep(poll)
    position, pending = 0, b""
    while True:
        running = is_running(run_dir)  # looked at before reading: what it wrote before letting go is read
        try:
            with open(path, "rb") as f:
                f.seek(position)
                chunk = f.read()
        except FileNotFoundError:
            chunk = b""
        position += len(chunk)
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for text in complete:
            event = parse_line(text.decode("utf-8", "replace"))
            if event is not None:
                yield event
        if not chunk and not running:
            return
        if not chunk:
            time.sleep(poll)


# ---------------------------------------------------------------------------
# Writing: a run opened by one process, committed epoch by epoch

def epochs_text(n: int) -> str:
    """`epoch 1 is` / `epochs 1-3 are`."""
    return "epoch 1 is" if n == 1 else f"epochs 1-{n} are"


@dataclass
class Run:
    """A run directory held (locked) by this process; with `writing` off (the other ranks of a torchrun
    job), the same interface with nothing written: rank 0 writes for all."""

    path: Path
    config: Config
    state: dict[str, Any] | None = None  # the last commit
    created: list[Path] = field(default_factory=list)  # folders this process made, deepest first
    new: bool = False  # this process wrote its config.json (create): a failure before epoch 0 leaves nothing
    _fd: int | None = field(default=None, repr=False)
    writing: bool = True
    resume_command: str = ""  # how to continue it, when not `mnistlab train --resume RUN`
    tensorboard: bool = False  # also write the events for TensorBoard, into RUN/tensorboard/
    _events: EventLog | None = field(default=None, repr=False)
    _board: TensorBoard | None = field(default=None, repr=False)

    @property
    def epoch(self) -> int:
        """Epochs committed so far."""
        return self.state["epoch"] if self.state else 0

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self.state["rows"]) if self.state else []

    def continue_with(self) -> str:
        return self.resume_command or f"mnistlab train --resume {self.path}"

    def kept(self) -> str:
        """What an interruption now would leave, for people."""
        if self.state is None and self.created:
            return "training had not started, so nothing was written"
        if not self.epoch:
            return f"no epoch was completed, so nothing was kept; start it again with: {self.continue_with()}"
        return f"{epochs_text(self.epoch)} kept in {self.path}; continue with: {self.continue_with()}"

    def commit(self, epoch: int, rows: list[dict[str, Any]], training: dict[str, Any], meta: dict[str, Any],
               device: str, world_size: int = 1) -> None:
        """Make `epoch` durable in one atomic write, then publish the derived files from it."""
        state = {"format": STATE_FORMAT, "epoch": epoch, "rows": rows, **training, "meta": meta,
                 "device": device, "world_size": world_size, "torch": str(torch.__version__),
                 "commit": f"{epoch}-{secrets.token_hex(4)}"}
        self._save(state, f"epoch {epoch} could not be saved")

    def mark_diverged(self, message: str) -> None:
        """Record in the commit that the run diverged after its last committed epoch (which it keeps)."""
        if self.state is not None:
            self._save({**self.state, "diverged": {"message": message},
                        "commit": f"{self.epoch}-{secrets.token_hex(4)}"}, "the divergence could not be recorded")

    def _save(self, state: dict[str, Any], failure: str) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)  # in memory first: the disk is touched by one write we control
        with signals_held():  # Ctrl-C waits for the commit and its derived files: a stopped run is whole
            if self.writing:
                try:
                    write_bytes(self.path / STATE, buf.getvalue())
                except WriteError as e:
                    raise RunError(f"{failure} ({e}); {self.kept()}") from None
            # What was written, read back: the live tensors of `state` go on changing as training goes on.
            buf.seek(0)
            self.state = torch.load(buf, map_location="cpu", weights_only=True)
            self.publish()

    def publish(self) -> None:
        """Rewrite metrics.csv, the checkpoint and summary.json (last) from the last commit."""
        if not self.writing:
            return
        s = summary(self.config, self.state)
        try:
            write_text(self.path / METRICS, metrics_csv(self.rows))
            if self.epoch:  # no checkpoint of untrained weights
                save_checkpoint(self.path, self.state["model"], {**self.state["meta"], "commit": self.state["commit"],
                                                                 "metrics": model_metrics(self.rows)})
            write_json(self.path / SUMMARY, s)
        except WriteError as e:
            raise RunError(f"{e}; {self.kept()}") from None

    def emit(self, event: dict[str, Any]) -> None:
        """Append an event to events.jsonl (outside the transaction: a failure to write it is not the run's)."""
        if not self.writing:
            return
        if self._events is None:
            self._events = EventLog(self.path / EVENTS)
        self._events.write(event)
        if self.tensorboard:
            self.board().write(event)

    def board(self) -> TensorBoard:
        """The run's TensorBoard writer (opened on first use)."""
        if self._board is None:
            self._board = TensorBoard(self.path)
        return self._board

    def extended(self, epochs: int) -> Config:
        """The config with `epochs` in all, when the run can be extended (or shortened, down to what is
        committed) to that; RunError saying why not. Nothing is written."""
        if epochs < self.epoch:
            raise RunError(f"--epochs {epochs}: {self.path} already has {self.epoch} epochs")
        if epochs != self.config.epochs and self.config.schedule != "constant" and self.epoch:
            raise RunError(f"--epochs {epochs}: {self.path} uses the {self.config.schedule} schedule, whose rate was "
                           f"planned for {self.config.epochs} epochs and already fell to its end; extend only runs with "
                           f"--schedule constant, or train a new run with --epochs {epochs}")
        return self.config.replace(epochs=epochs)

    def set_epochs(self, epochs: int) -> None:
        """Extend (or shorten) the run to `epochs` in all (see `extended`)."""
        self.config = self.extended(epochs)
        if self.writing:
            write_json(self.path / CONFIG, self.config.to_dict())
        self.publish()

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        if self._board is not None:
            self._board.close()
            self._board = None
        if self._fd is not None:
            # Removed while still locked (see _try_lock): an idle run holds no .lock naming a process long gone.
            with contextlib.suppress(OSError):
                (self.path / LOCK).unlink()
            os.close(self._fd)  # releases the lock
            self._fd = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        self.close()
        if kind is not None and self.state is None and (self.created or self.new):
            self.discard()

    def discard(self) -> None:
        """Remove a run that never committed an epoch 0 (failed before training), with the folders made for it
        (an empty folder it was given stays)."""
        for name in (CONFIG, EVENTS, LOCK):
            with contextlib.suppress(OSError):  # a read-only folder: the error that got us here is the one to show
                (self.path / name).unlink(missing_ok=True)
        for folder in self.created:
            with contextlib.suppress(OSError):  # not empty: someone else's now
                folder.rmdir()


def _lock(path: Path) -> int:
    try:
        fd = _try_lock(path / LOCK)
    except OSError as e:
        raise RunError(f"cannot lock {path / LOCK}: {e.strerror or e}") from None
    if fd is None:
        raise RunError(f"{path} is being written by {_holder(path)}; wait for it to finish or choose another --out")
    # Who holds it, for the refusal above; written after locking, read by others.
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                 .encode())
    except OSError as e:  # a full disk: the lock is held all the same, only its note is missing
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            os.close(fd)
            raise RunError(f"cannot write {path / LOCK}: {e.strerror or e}") from None
    return fd


def _remove_stale_temps(path: Path) -> None:
    remove_stale_temps(path)
    if (path / FIGURES).is_dir():
        remove_stale_temps(path / FIGURES)


def _visible_entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK)


def default_path(config: Config, root: str | os.PathLike = "runs") -> Path:
    """runs/<recipe>-<dataset>, then -2, -3, ...: the first name not taken yet (your own data by its short name)."""
    return first_free(Path(root) / f"{config.recipe}-{names.short(config.dataset)}")


def first_free(base: Path) -> Path:
    """`base` if nothing is there, else the first of base-2, base-3, ... that is free."""
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def _refuse_to_replace(path: Path, held: bool = False) -> None:
    """RunError unless `path` may become a new run: empty, or a run stopped before its first epoch.
    `held`: this process holds the run's lock (so its own lock is no refusal)."""
    if not held and is_running(path):
        raise RunError(f"{path} is being written by {_holder(path)}; wait for it to finish or choose another --out")
    entries = _visible_entries(path)
    if not (path / CONFIG).is_file():
        if entries:
            held = [n for n in entries if n in RUN_FILES]
            what = f" ({', '.join(held)} without {CONFIG}: a damaged run's files?)" if held else ""
            raise RunError(f"--out {path}: the folder is not empty and holds no run{what}; choose a new or empty "
                           "folder")
        return
    state = read_state(path)
    if state and state["epoch"] > 0:
        raise RunError(f"--out {path} already holds a run; continue it with: mnistlab train --resume {path} "
                       "(or choose another --out)")
    model = _published_model(path)
    if state is None and model:
        raise RunError(f"--out {path} holds a trained model but no {STATE} to resume it from ({model}); "
                       "choose another --out, or move that folder away first")


def create(path: str | os.PathLike, config: Config) -> Run:
    """A new run in `path` (created, or empty, or a run stopped before its first commit), locked."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunError(f"--out {path}: a file of that name is in the way; choose another --out")
    if path.is_dir():
        _refuse_to_replace(path)
    created = [p for p in (path, *path.parents) if not p.exists()]
    make_dirs(path)
    run = Run(path, config, created=created, _fd=_lock(path))
    try:
        _refuse_to_replace(path, held=True)  # again, now that we hold it: it may have been filled meanwhile
        _remove_stale_temps(path)
        for derived in (STATE, METRICS, SUMMARY, WEIGHTS, META, EVENTS):  # from a run stopped in its first epoch
            (path / derived).unlink(missing_ok=True)
        write_json(path / CONFIG, config.to_dict())
        run.new = True
    except BaseException:
        run.close()
        raise
    return run


def open_run(path: str | os.PathLike) -> Run:
    """An existing run, locked, its stale temporary files removed; nothing else is written until the
    caller commits or publishes (a resume refused after opening changes nothing)."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"--resume {path}: no such run directory")
    if not (path / CONFIG).is_file():
        raise RunError(f"--resume {path}: not a run directory ({CONFIG} is missing)")
    run = Run(path, read_config(path), _fd=_lock(path))
    try:
        _remove_stale_temps(path)
        run.state = read_state(path)
        if run.state is None and (path / WEIGHTS).is_file():
            raise RunError(f"--resume {path}: {STATE} is missing, so the run cannot continue; "
                           f"{_published_model(path)}")
    except BaseException:
        run.close()
        raise
    return run
