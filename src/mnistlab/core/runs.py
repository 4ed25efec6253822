"""The run directory: one folder per training run, written as a transaction.

    config.json          the configuration, stored once (written when the run is created)
    state.pt             the commit: after each epoch, one atomic write of everything the
                         run needs to go on (weights, optimiser, schedule, RNG) and to
                         rebuild the files below (metric rows, checkpoint metadata)
    metrics.csv          derived: one row per committed epoch
    model.safetensors    derived: the weights of the last committed epoch ...
    model.json           ... and what is needed to rebuild and use them
    summary.json         derived: the run at a glance
    .lock                held by the one process writing the run

The derived files are rewritten from `state.pt` after every commit and whenever
the run is opened again, so a kill at any instant loses at most the epoch in
progress and never leaves them disagreeing. Epoch 0 is committed too, before
training starts, so a run stopped during its first epoch resumes from the
very start (or `train --out` over it starts it again).
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .checkpoint import META, WEIGHTS, check_tensors, save_checkpoint, validate_meta
from ..base.config import Config, ConfigError
from ..base.errors import CheckpointError, RunError, WriteError, shown
from ..base.files import (
    make_dirs,
    open_regular,
    read_json,
    read_regular,
    remove_stale_temps,
    write_bytes,
    write_json,
    write_text,
)

CONFIG = "config.json"
STATE = "state.pt"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
LOCK = ".lock"
METRIC_FIELDS = ("epoch", "train_loss", "val_accuracy", "test_accuracy", "lr", "seconds")
STATE_FORMAT = 2


# ---------------------------------------------------------------------------
# The lock: an OS file lock, released by the OS when the process ends however it ends

def _try_lock(path: Path) -> int | None:
    """A locked file descriptor for `path`, or None when another process holds the lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except ImportError:  # Windows: msvcrt locks a byte range instead
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            os.close(fd)
            return None
    return fd


def _holder(run_dir: Path) -> str:
    try:
        return (run_dir / LOCK).read_text(encoding="utf-8").strip() or "another process"
    except OSError:
        return "another process"


def is_running(run_dir: str | os.PathLike) -> bool:
    """True while some process holds the run's lock."""
    path = Path(run_dir) / LOCK
    if not path.is_file():
        return False
    try:
        fd = _try_lock(path)
    except OSError:
        return False
    if fd is None:
        return True
    os.close(fd)
    return False


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
        raw = read_regular(path)  # a FIFO named state.pt is refused, never waited on
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RunError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the unpickler says, the file is unusable
        raise RunError(f"{path}: damaged resume state ({type(e).__name__}); the run cannot continue "
                       "from it") from None
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
            and _finite(state.get("world_size", 1), 1) and isinstance(state.get("world_size", 1), int)):
        raise ValueError("device, world_size or torch is of the wrong type")


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


def summary(config: Config, state: dict[str, Any] | None) -> dict[str, Any]:
    """summary.json: the run at a glance (the full configuration is in config.json)."""
    rows = state["rows"] if state else []
    last = rows[-1] if rows else {}
    return {
        "recipe": config.recipe,
        "dataset": config.dataset,
        "epochs": len(rows),
        "total_epochs": config.epochs,
        "finished": len(rows) == config.epochs,
        "train_loss": [r["train_loss"] for r in rows],
        "test_accuracy": last.get("test_accuracy"),
        "val_accuracy": last.get("val_accuracy"),
        "train_seconds": sum(r["seconds"] for r in rows),
        "device": state["device"] if state else None,
        "world_size": state.get("world_size", 1) if state else None,
        "torch": state["torch"] if state else None,
        "config": CONFIG,
    }


@dataclass
class RunInfo:
    """One line of `mnistlab runs`."""

    path: Path
    state: str  # finished, resumable, running or damaged
    recipe: str = ""
    dataset: str = ""
    epochs: int = 0
    total_epochs: int = 0
    test_accuracy: float | None = None
    train_seconds: float = 0.0
    problem: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.path.name, "path": str(self.path), "state": self.state, "recipe": self.recipe,
                "dataset": self.dataset, "epochs": self.epochs, "total_epochs": self.total_epochs,
                "test_accuracy": self.test_accuracy, "train_seconds": self.train_seconds,
                **({"problem": self.problem} if self.problem else {})}


def info(run_dir: str | os.PathLike) -> RunInfo:
    """What a run holds and whether it is finished, resumable or being written now."""
    path = Path(run_dir)
    running = is_running(path)
    try:
        config = read_config(path)
        s = summary(config, read_state(path))
    except RunError as e:
        return RunInfo(path, "running" if running else "damaged", problem=str(e))
    state = "running" if running else "finished" if s["finished"] else "resumable"
    return RunInfo(path, state, config.recipe, config.dataset, s["epochs"], s["total_epochs"],
                   s["test_accuracy"], s["train_seconds"])


def list_runs(root: str | os.PathLike = "runs") -> list[RunInfo]:
    """Every run directory in `root` (and `root` itself if it is one), sorted by name."""
    root = Path(root)
    try:
        if not root.is_dir():
            raise RunError(f"{root}: no such folder")
        folders = [root] if (root / CONFIG).is_file() else sorted(p for p in root.iterdir() if (p / CONFIG).is_file())
    except OSError as e:
        raise RunError(f"{e.filename or root}: cannot read ({e.strerror or e})") from None
    return [info(p) for p in folders]


# ---------------------------------------------------------------------------
# Writing: a run opened by one process, committed epoch by epoch

def epochs_text(n: int) -> str:
    """`epoch 1 is` / `epochs 1-3 are`."""
    return "epoch 1 is" if n == 1 else f"epochs 1-{n} are"


@dataclass
class Run:
    """A run directory held (locked) by this process."""

    path: Path
    config: Config
    state: dict[str, Any] | None = None  # the last commit
    created: list[Path] = field(default_factory=list)  # folders this process made, deepest first
    _fd: int | None = field(default=None, repr=False)

    @property
    def epoch(self) -> int:
        """Epochs committed so far."""
        return self.state["epoch"] if self.state else 0

    @property
    def rows(self) -> list[dict[str, Any]]:
        return list(self.state["rows"]) if self.state else []

    def kept(self) -> str:
        """What an interruption now would leave, for people."""
        if self.state is None and self.created:
            return "training had not started, so nothing was written"
        if not self.epoch:
            return f"no epoch was completed, so nothing was kept; start it again with: mnistlab train --resume {self.path}"
        return f"{epochs_text(self.epoch)} kept in {self.path}; continue with: mnistlab train --resume {self.path}"

    def commit(self, epoch: int, rows: list[dict[str, Any]], training: dict[str, Any], meta: dict[str, Any],
               device: str, world_size: int = 1) -> None:
        """Make `epoch` durable in one atomic write, then publish the derived files from it."""
        state = {"format": STATE_FORMAT, "epoch": epoch, "rows": rows, **training, "meta": meta,
                 "device": device, "world_size": world_size, "torch": str(torch.__version__)}
        buf = io.BytesIO()
        torch.save(state, buf)  # in memory first: the disk is touched by one write we control
        try:
            write_bytes(self.path / STATE, buf.getvalue())
        except WriteError as e:
            raise RunError(f"epoch {epoch} could not be saved ({e}); {self.kept()}") from None
        self.state = state
        self.publish()

    def publish(self) -> None:
        """Rewrite metrics.csv, the checkpoint and summary.json from the last commit."""
        s = summary(self.config, self.state)
        try:
            write_text(self.path / METRICS, metrics_csv(self.rows))
            if self.epoch:  # no checkpoint of untrained weights
                metrics = {k: s[k] for k in ("epochs", "train_loss", "test_accuracy", "val_accuracy", "train_seconds")}
                save_checkpoint(self.path, self.state["model"], {**self.state["meta"], "metrics": metrics})
            write_json(self.path / SUMMARY, s)
        except WriteError as e:
            raise RunError(f"{e}; {self.kept()}") from None

    def set_epochs(self, epochs: int) -> None:
        """Extend (or shorten, down to what is committed) the run to `epochs` in all."""
        if epochs < self.epoch:
            raise RunError(f"--epochs {epochs}: {self.path} already has {self.epoch} epochs")
        if epochs != self.config.epochs and self.config.schedule != "constant" and self.epoch:
            raise RunError(f"--epochs {epochs}: {self.path} uses the {self.config.schedule} schedule, whose rate was "
                           f"planned for {self.config.epochs} epochs and already fell to its end; extend only runs with "
                           f"--schedule constant, or train a new run with --epochs {epochs}")
        self.config = self.config.replace(epochs=epochs)
        write_json(self.path / CONFIG, self.config.to_dict())
        self.publish()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        self.close()
        if kind is not None and self.state is None and self.created:
            self.discard()

    def discard(self) -> None:
        """Remove a run that never committed an epoch 0 (failed before training), with the folders made for it."""
        for name in (CONFIG, LOCK):
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
    if (path / "figures").is_dir():
        remove_stale_temps(path / "figures")


def _visible_entries(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.name != LOCK)


def default_path(config: Config, root: str | os.PathLike = "runs") -> Path:
    """runs/<recipe>-<dataset>, then -2, -3, ...: the first name not taken yet."""
    base = Path(root) / f"{config.recipe}-{config.dataset}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def create(path: str | os.PathLike, config: Config) -> Run:
    """A new run in `path` (created, or empty, or a run stopped before its first commit), locked."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunError(f"--out {path}: a file of that name is in the way; choose another --out")
    if path.is_dir() and not (path / CONFIG).is_file() and _visible_entries(path):
        raise RunError(f"--out {path}: the folder is not empty and holds no run; choose a new or empty folder")
    created = [p for p in (path, *path.parents) if not p.exists()]
    make_dirs(path)
    run = Run(path, config, created=created, _fd=_lock(path))
    try:
        if (path / CONFIG).is_file():
            state = read_state(path)
            if state and state["epoch"] > 0:
                raise RunError(f"--out {path} already holds a run; continue it with: mnistlab train --resume {path} "
                               "(or choose another --out)")
        if not (path / CONFIG).is_file() and _visible_entries(path):  # filled while we locked
            raise RunError(f"--out {path}: the folder is not empty and holds no run; choose a new or empty folder")
        _remove_stale_temps(path)
        for derived in (STATE, METRICS, SUMMARY, WEIGHTS, META):  # from a run stopped in its first epoch
            (path / derived).unlink(missing_ok=True)
        write_json(path / CONFIG, config.to_dict())
    except BaseException:
        run.close()
        raise
    return run


def open_run(path: str | os.PathLike) -> Run:
    """An existing run, locked, its stale temporary files removed and derived files rewritten."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"--resume {path}: no such run directory")
    if not (path / CONFIG).is_file():
        raise RunError(f"--resume {path}: not a run directory ({CONFIG} is missing)")
    run = Run(path, read_config(path), _fd=_lock(path))
    try:
        _remove_stale_temps(path)
        run.state = read_state(path)
        run.publish()
    except BaseException:
        run.close()
        raise
    return run

