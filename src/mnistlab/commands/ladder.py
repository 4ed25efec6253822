"""The speed ladder: from the course notebook's 90% to a track's best, one change at a time, measured here.

A track is a fixed list of steps. The first is the notebook's recipe exactly
(`--recipe seed`); every later step changes one setting of the step before it
(one idea: a setting such as the learning-rate schedule may take two fields).
Each step is trained with `seeds` seeds through the engine, one ordinary run
directory per seed, and becomes one row: the test accuracy (mean and standard
deviation over the seeds), the training seconds (median), the time to reach
98% (and 99% on the CNN track), the speed-up against the first row, and the
floating-point operations of an epoch.

A ladder folder holds:

    ladder.json                the plan: track, device, data folder, overrides, every step's config
    <kk>-<step>-seed<s>/       one run directory per step and seed, as `mnistlab train` writes one
    ladder.csv                 one row per step
    ladder.png                 test accuracy against training seconds, one labelled point per step

The runs are trained seed by seed (every step with seed 0, then every step with
seed 1, ...): a change in the machine's load then hits every step alike, and an
interrupted ladder already has a whole first pass. Running the ladder again
with the same folder keeps the finished runs and resumes the others.

What is measured, and how:
- training seconds: the engine's epoch clock (the device drained before and
  after; evaluation and data loading not counted), summed over the epochs.
- time to 98%: the training seconds up to the end of the first epoch whose test
  accuracy reached it (`runs.time_to_target`, the function behind `train
  --target-accuracy`). Every step trains all its epochs, so that its final
  accuracy is its own; stopping at the target would not change the training up
  to it (the schedule is planned over all epochs), so the time is the one
  `--target-accuracy 0.98` records.
- FLOPs per epoch: the multiply-adds (2 FLOPs each) of the linear and
  convolution layers, forward and backward (`models.step_flops`), summed over
  the epoch's batches. Biases, activations, normalisation, pooling, the loss and
  the optimiser's update are not counted.
"""

from __future__ import annotations

import csv
import io
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .. import __version__
from ..base import data as data_mod
from ..base.config import RECIPES, Config
from ..base.devices import describe, select_device
from ..base.errors import Interrupted, RunError, UsageError
from ..base.files import make_dirs, read_json, write_json, write_text
from ..base.models import step_flops
from ..base.threads import load_average
from ..core import engine, runs
from ..core.events import Emit
from .bench import WARMUP_BATCHES, cpu_model
from .figures import ladder_figure, save_png

Log = Callable[[str], None]

PLAN = runs.LADDER_PLAN
TABLE = "ladder.csv"
FIGURE = "ladder.png"
PLAN_FORMAT = 1


@dataclass(frozen=True)
class Step:
    """One rung: its short name (run folders, the figure), the change in words, and the Config fields it sets."""

    name: str
    change: str
    settings: dict[str, Any] = field(default_factory=dict)


# The first row of every track: the course notebook as written (LogSoftmax + NLLLoss, SGD lr 0.003, batch 64,
# 5 epochs), its data held on the device like every mnistlab run.
NOTEBOOK = RECIPES["seed"]

# Each step is one line: a new row (e.g. a faster step or another optimiser, as Config fields) is one more
# Step(...) where it belongs.
TRACKS: dict[str, tuple[Step, ...]] = {
    "mlp": (
        Step("notebook", "the notebook: SGD lr 0.003, batch 64, 5 epochs"),
        Step("batch", "batch 128 with the rate scaled: lr 0.006", {"batch_size": 128, "lr": 0.006}),
        Step("nesterov", "Nesterov momentum 0.9", {"momentum": 0.9, "nesterov": True}),
        Step("rate", "learning rate x10: 0.06", {"lr": 0.06}),
        Step("onecycle", "one-cycle rate: 15% warm-up, decay to 0", {"schedule": "onecycle", "warmup": 0.15}),
        Step("smoothing", "label smoothing 0.1 (loss on logits)", {"output": "logits", "label_smoothing": 0.1}),
        Step("epochs", "10 epochs instead of 5", {"epochs": 10}),
        Step("shifts", "random shifts of up to 1 pixel", {"shift": 1}),
        Step("width", "hidden layers 256x128 instead of 128x64", {"hidden": (256, 128)}),
    ),
    "cnn": (
        Step("notebook", "the notebook: SGD lr 0.003, batch 64, 5 epochs"),
        Step("convnet", "the conv net instead of the MLP", {"model": "cnn"}),
        Step("nesterov", "Nesterov momentum 0.9", {"momentum": 0.9, "nesterov": True}),
        Step("rate", "learning rate 0.05", {"lr": 0.05}),
        Step("onecycle", "one-cycle rate: 15% warm-up, decay to 0", {"schedule": "onecycle", "warmup": 0.15}),
        Step("smoothing", "label smoothing 0.1 (loss on logits)", {"output": "logits", "label_smoothing": 0.1}),
        Step("shifts", "random shifts of up to 2 pixels", {"shift": 2}),
    ),
}
# The accuracies whose time to reach is a column of the track's table.
TARGETS: dict[str, tuple[float, ...]] = {"mlp": (0.98,), "cnn": (0.98, 0.99)}


@dataclass(frozen=True)
class Rung:
    """A step of a planned ladder: its position, the step, and the config its runs train."""

    index: int
    step: Step
    config: Config

    def run_name(self, seed: int) -> str:
        return f"{self.index:02d}-{self.step.name}-seed{seed}"


def plan(track: str, device: str = "auto", overrides: dict[str, Any] | None = None) -> list[Rung]:
    """The track's steps with their configs: each step's settings applied to the config of the step before,
    then `overrides` (fields set on every step, e.g. a small `train_size` for a quick look) and the device.
    Every step measures its test accuracy after every epoch, for the times to 98% and 99% (evaluation time is
    not in the training seconds)."""
    if track not in TRACKS:
        raise UsageError(f"unknown track {track!r}; the tracks are {', '.join(TRACKS)}")
    rungs, config = [], NOTEBOOK
    for index, step in enumerate(TRACKS[track]):
        config = config.replace(**step.settings)
        try:
            planned = config.replace(**(overrides or {}), device=device, eval_every_epoch=True)
        except TypeError as e:  # a field that Config does not have
            raise UsageError(f"ladder overrides: {e}") from None
        rungs.append(Rung(index, step, planned))
    return rungs


def settings_text(before: Config | None, after: Config) -> str:
    """`lr 0.006 -> 0.06`: what changed between two configs, field by field (the first row: its recipe)."""
    if before is None:
        return f"recipe {after.recipe}"

    def shown(value: Any) -> str:
        return "x".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)

    old = before.to_dict()
    return ", ".join(f"{k} {shown(old[k])} -> {shown(v)}" for k, v in after.differences(before).items())


# ---------------------------------------------------------------------------
# The ladder folder

def default_out(track: str, root: str | os.PathLike = "runs") -> Path:
    """runs/ladder-<track>, then -2, -3, ...: the first name not taken yet."""
    return runs.first_free(Path(root) / f"ladder-{track}")


def kept_plan(out: Path, track: str, device: str, overrides: dict[str, Any]) -> dict[str, Any] | None:
    """The plan of the ladder already in `out` (None when `out` is new or empty), checked to be this ladder's."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out}: a file of that name is in the way; choose another --out")
    plan_path = out / PLAN
    if not plan_path.is_file():
        if out.is_dir() and any(out.iterdir()):
            raise RunError(f"--out {out}: the folder is not empty and holds no ladder ({PLAN} is missing); choose a "
                           "new or empty folder")
        return None
    try:
        kept = read_json(plan_path)
        kept_track, kept_device, kept_overrides = kept["track"], kept["device"], kept["overrides"]
    except (OSError, ValueError, UnicodeDecodeError, TypeError, KeyError) as e:
        raise RunError(f"{plan_path}: damaged ({e}); choose another --out") from None
    if (kept_track, kept_device, kept_overrides) != (track, device, overrides):
        said = ", ".join(f"{name} {value}" for name, value in (("--track", kept_track), ("--device", kept_device)))
        raise RunError(f"--out {out} holds a ladder of other settings ({said}"
                       f"{', overrides ' + str(kept_overrides) if kept_overrides else ''}); continue it with "
                       "those flags, or choose another --out")
    return kept


def write_plan(out: Path, track: str, rungs: list[Rung], device: str, data_dir: str | None,
               overrides: dict[str, Any]) -> None:
    """A new ladder's folder and its plan (the data folder too, so that continuing it needs no --data-dir)."""
    make_dirs(out)
    write_json(out / PLAN, {"format": PLAN_FORMAT, "track": track, "device": device, "data_dir": data_dir,
                            "overrides": overrides, "mnistlab": __version__,
                            "steps": [{"name": r.step.name, "change": r.step.change, "config": r.config.to_dict()}
                                      for r in rungs]})


def _state(path: Path, config: Config) -> str:
    """What the run folder `path` holds for `config`: new (nothing yet), finished, diverged or resumable.
    A run of another config is a RunError: the folder is not this ladder's any more."""
    if not (path / runs.CONFIG).is_file():
        return "new"
    kept = runs.read_config(path)
    if kept != config:
        changed = ", ".join(f"{k} {v}" for k, v in kept.differences(config).items()) or "its recipe"
        raise RunError(f"{path}: holds a run of other settings ({changed}) than this ladder's step; move it away "
                       "or choose another --out")
    state = runs.read_state(path)
    return runs.status(config, state) if state else "resumable"


# ---------------------------------------------------------------------------
# Training

def _warm_up(config: Config, data_dir: str | None, examples: int, threads: int | None) -> None:
    """A few untimed batches of `config`, so that the first timed run does not pay the process's first calls."""
    size = min(examples, WARMUP_BATCHES * config.batch_size)
    with tempfile.TemporaryDirectory(prefix="mnistlab-ladder-warmup-") as tmp:
        engine.train(config.replace(epochs=1, train_size=size, val_size=0), out=Path(tmp) / "run", data_dir=data_dir,
                     threads=threads)


def train_all(out: Path, rungs: list[Rung], seeds: int, data_dir: str | None, examples: int,
              log: Log, on_event: Emit | None, again: str, threads: int | None = None) -> None:
    """Train (or resume) every run the table needs, seed by seed, keeping what is finished.

    Interrupted, it says what is kept and that `again` (the command that continues the ladder) goes on.
    """
    todo, done = [], []
    for seed in range(seeds):
        for rung in rungs:
            config = rung.config.replace(seed=seed)
            path = out / rung.run_name(seed)
            state = _state(path, config)
            (todo if state in ("new", "resumable") else done).append((rung, seed, config, path, state))
    if not todo:
        return
    log(f"ladder {out}: {len(todo)} of {len(rungs) * seeds} runs to train"
        + (f" ({len(rungs) * seeds - len(todo)} kept)" if len(todo) < len(rungs) * seeds else ""))
    _warm_up(todo[0][2], data_dir, examples, threads)
    for number, (rung, seed, config, path, state) in enumerate(todo, 1):
        log(f"[{number}/{len(todo)}] step {rung.index} {rung.step.name}, seed {seed}: {rung.step.change}"
            + (" (resuming)" if state == "resumable" else ""))
        try:
            if state == "new":
                engine.train(config, out=path, data_dir=data_dir, on_event=on_event, threads=threads)
            else:
                engine.resume(path, data_dir=data_dir, on_event=on_event, threads=threads)
        except Interrupted:
            kept = runs.read_state(path)
            this = (f"of {path}, {runs.epochs_text(kept['epoch'])} kept" if kept and kept["epoch"] else
                    f"{path} had not finished an epoch")
            raise Interrupted(f"interrupted; {number - 1 + len(done)} runs of the ladder are done and kept, {this}; "
                              f"continue the ladder with: {again}") from None


# ---------------------------------------------------------------------------
# The table

def flops_per_epoch(config: Config, examples: int) -> int:
    """Forward and backward FLOPs of the linear and conv layers over one epoch of `examples` images."""
    full, rest = divmod(examples, config.batch_size)
    flops = full * step_flops(config.model, config.hidden, config.batch_size)
    if rest and not config.drop_last:
        flops += step_flops(config.model, config.hidden, rest)
    return flops


def target_key(target: float) -> str:
    """`time_to_98`: the column of a target accuracy (0.98)."""
    return f"time_to_{round(100 * target)}"


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def step_row(rung: Rung, run_dirs: list[Path], targets: tuple[float, ...], examples: int,
             previous: Config | None) -> dict[str, Any]:
    """One row of the table, from the step's run directories as committed now."""
    finished, diverged = [], 0
    for path in run_dirs:
        state = runs.read_state(path) if (path / runs.CONFIG).is_file() else None
        status = runs.status(rung.config, state) if state else "resumable"
        if status == "finished":
            finished.append(state["rows"])
        diverged += status == "diverged"
    accuracies = [rows[-1]["test_accuracy"] for rows in finished]
    seconds = [sum(r["seconds"] for r in rows) for rows in finished]
    flops = flops_per_epoch(rung.config, examples)
    per_epoch = _median([s / rung.config.epochs for s in seconds])
    row: dict[str, Any] = {
        "step": rung.index, "name": rung.step.name, "change": rung.step.change,
        "settings": settings_text(previous, rung.config),
        "seeds": len(finished), "diverged": diverged,
        "test_accuracy_mean": statistics.fmean(accuracies) if accuracies else None,
        "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else (0.0 if accuracies else None),
        "test_accuracies": accuracies,
        "train_seconds_median": _median(seconds),
        "seconds_per_epoch_median": per_epoch,
    }
    for target in targets:
        reached = [t for t in (runs.time_to_target(rows, target) for rows in finished) if t is not None]
        row[target_key(target)] = _median(reached)
        row[f"reached_{round(100 * target)}"] = len(reached)
    row.update({"flops_per_epoch": flops, "gflops_per_second": flops / per_epoch / 1e9 if per_epoch else None,
                "runs": [p.name for p in run_dirs]})
    return row


def table(out: Path, rungs: list[Rung], seeds: int, targets: tuple[float, ...], examples: int) -> list[dict[str, Any]]:
    """Every step's row, with its gain over the step before and its speed-up over the first row."""
    rows, previous = [], None
    for rung in rungs:
        rows.append(step_row(rung, [out / rung.run_name(s) for s in range(seeds)], targets, examples, previous))
        previous = rung.config
    first = rows[0]["train_seconds_median"]
    for before, row in zip([None, *rows], rows):
        seconds, acc = row["train_seconds_median"], row["test_accuracy_mean"]
        row["speedup"] = first / seconds if first and seconds else None
        known = before is not None and acc is not None and before["test_accuracy_mean"] is not None
        row["accuracy_gain"] = acc - before["test_accuracy_mean"] if known else None
        row["time_ratio"] = (seconds / before["train_seconds_median"]
                             if before is not None and seconds and before["train_seconds_median"] else None)
    return rows


CSV_COLUMNS = ("step", "name", "change", "settings", "seeds", "diverged", "test_accuracy_mean", "test_accuracy_std",
               "accuracy_gain", "train_seconds_median", "time_ratio", "seconds_per_epoch_median")
CSV_AFTER = ("speedup", "flops_per_epoch", "gflops_per_second", "test_accuracies", "runs")


def table_csv(rows: list[dict[str, Any]], targets: tuple[float, ...]) -> str:
    """ladder.csv: one line per step; lists joined by spaces, unknown values empty."""
    columns = [*CSV_COLUMNS, *(k for t in targets for k in (target_key(t), f"reached_{round(100 * t)}")), *CSV_AFTER]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if row[c] is None else " ".join(map(str, row[c])) if isinstance(row[c], list)
                         else row[c] for c in columns])
    return buf.getvalue()


# ---------------------------------------------------------------------------
# The whole

@dataclass
class Ladder:
    track: str
    out: Path
    seeds: int
    targets: tuple[float, ...]
    machine: dict[str, Any]
    rows: list[dict[str, Any]]
    files: list[Path]

    def to_dict(self) -> dict[str, Any]:
        return {"track": self.track, "out": str(self.out), "seeds": self.seeds, "targets": list(self.targets),
                "machine": self.machine, "rows": self.rows, "files": [str(p) for p in self.files]}


def run_ladder(track: str = "mlp", *, seeds: int = 3, device: str = "auto", data_dir: str | os.PathLike | None = None,
               out: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None, plots: bool = True,
               log: Log = lambda line: None, on_event: Emit | None = None, progress: bool = False,
               threads: int | None = None) -> Ladder:
    """Train the `track`'s ladder with `seeds` seeds into `out` (default runs/ladder-<track>[-N]), or continue
    the one there, and return its table (also written as ladder.csv, and ladder.png unless `plots` is off).

    `overrides`: Config fields set on every step (the tests train one short epoch per step on small data).
    `log` gets a line as each run starts, `on_event` every run's events (core/events.py).
    """
    if seeds < 1:
        raise UsageError(f"--seeds must be at least 1 (got {seeds})")
    overrides = dict(overrides or {})
    rungs = plan(track, device, overrides)
    out = Path(out) if out is not None else default_out(track)
    kept = kept_plan(out, track, device, overrides)
    if data_dir is not None:
        data_dir = str(Path(data_dir).resolve())
    elif kept and kept.get("data_dir") and Path(kept["data_dir"]).is_dir():
        data_dir = kept["data_dir"]  # the ladder's own data, as each of its runs remembers it too
    # A bad device or data is one line before anything is written.
    torch_device = select_device(device)
    first = rungs[0].config
    dataset = data_mod.load(first.dataset, data_dir, progress=progress, skip_bad=first.skip_bad)
    available = len(dataset.train) if not first.train_size else min(first.train_size, len(dataset.train))
    examples = available - first.val_size
    if kept is None:
        write_plan(out, track, rungs, device, data_dir, overrides)
    started = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "load_average": load_average()}
    again = f"mnistlab ladder --track {track} --seeds {seeds}{'' if device == 'auto' else ' --device ' + device} --out {out}"
    train_all(out, rungs, seeds, data_dir, examples, log, on_event, again, threads)
    targets = TARGETS[track]
    rows = table(out, rungs, seeds, targets, examples)
    machine = {"device": describe(torch_device), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "cpu": cpu_model(),
               "dataset": dataset.spec.name, "data_source": dataset.source, "started": started["date"],
               "load_average_start": started["load_average"], "load_average_end": load_average()}
    files = [out / TABLE]
    write_text(out / TABLE, table_csv(rows, targets))
    if plots:
        title = f"ladder {track}: test accuracy against training time, {describe(torch_device)}"
        files.append(save_png(ladder_figure(rows, targets, title), out / FIGURE))
    return Ladder(track, out, seeds, targets, machine, rows, files)


# ---------------------------------------------------------------------------
# For people

def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _ratio(value: float | None) -> str:
    """`1.40x`, `0.021x` (a conv net's step against the MLP's: two digits that say something)."""
    if value is None:
        return "-"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"


def format_table(ladder: Ladder) -> str:
    """The table as the terminal shows it, with the machine it was measured on."""
    m = ladder.machine
    loads = [f"{v:.1f}" for v in (m["load_average_start"], m["load_average_end"]) if v is not None]
    head = [f"mnistlab ladder: track {ladder.track}, {ladder.seeds} seed{'s' if ladder.seeds > 1 else ''} per step, "
            f"{m['dataset']} ({m['data_source']})",
            f"machine: {m['device']}, torch {m['torch']}, CPU {m['cpu']}"
            + (f", OMP_NUM_THREADS={m['omp_num_threads']}" if m["omp_num_threads"] else "")
            + (f", load average {' -> '.join(loads)}" if loads else "") + f", {m['started']}", ""]
    header = ["#", "change", "test accuracy", "gain", "train s", "x prev", "s/epoch",
              *(f"to {round(100 * t)}%" for t in ladder.targets), "speed-up", "GFLOP/epoch", "GFLOP/s"]
    lines = [header]
    for row in ladder.rows:
        mean, std = row["test_accuracy_mean"], row["test_accuracy_std"]
        acc = f"{100 * mean:.2f} ± {100 * std:.2f}%" if mean is not None else "-"
        if row["seeds"] < ladder.seeds:
            acc += f" ({row['seeds']}/{ladder.seeds})"
        reach = []
        for t in ladder.targets:
            value, count = row[target_key(t)], row[f"reached_{round(100 * t)}"]
            reach.append(_seconds(value) + (f" ({count}/{row['seeds']})" if value is not None and count < row["seeds"]
                                            else ""))
        lines.append([str(row["step"]), row["change"], acc,
                      f"{100 * row['accuracy_gain']:+.2f}" if row["accuracy_gain"] is not None else "",
                      _seconds(row["train_seconds_median"]),
                      f"{row['time_ratio']:.2f}" if row["time_ratio"] is not None else "",
                      _seconds(row["seconds_per_epoch_median"]), *reach,
                      _ratio(row["speedup"]),
                      f"{row['flops_per_epoch'] / 1e9:.1f}",
                      f"{row['gflops_per_second']:.1f}" if row["gflops_per_second"] is not None else "-"])
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    left = {1}  # the words read from the left, the numbers line up on the right
    text = ["  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
            for r in lines]
    notes = ["",
             "test accuracy: mean ± standard deviation over the seeds; gain: percentage points over the row above",
             "train s: median training seconds (evaluation and data loading not counted); x prev: over the row above",
             "to N%: median training seconds until the end of the first epoch at N% test accuracy (of the seeds "
             "that reached it); speed-up: the first row's train s over this row's",
             "GFLOP/epoch: forward and backward of the linear and conv layers; GFLOP/s: that over s/epoch"]
    diverged = [row for row in ladder.rows if row["diverged"]]
    notes += [f"step {row['step']}: {row['diverged']} of {ladder.seeds} seeds diverged (left out)" for row in diverged]
    return "\n".join(head + text + notes)
