"""Training: the notebook's loop (zero_grad, forward, loss, backward, step), made fast
by where the data lives (one normalised tensor on the device, batches as
shuffled index slices) and how rarely Python waits (losses summed on the device,
read once per epoch).

`train(config)` runs a whole run: it writes a run directory with the config,
per-epoch metrics, a checkpoint after every epoch, and `summary.json`, and can
resume from any completed epoch with the same result as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import data as data_mod
from .checkpoint import load_state, save_checkpoint, save_state
from .config import Config
from .errors import RunError
from .evaluation import accuracy
from .files import read_json, write_json, write_text
from .models import architecture, build_model, loss_function

METRIC_FIELDS = ("epoch", "train_loss", "val_accuracy", "test_accuracy", "lr", "seconds")


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    model: nn.Module


# ---------------------------------------------------------------------------
# Pieces of a run

def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RunError("--device cuda: CUDA is not available on this machine (try --device auto)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise RunError("--device mps: MPS is not available on this machine (try --device auto)")
    return torch.device(name)


def make_optimizer(config: Config, model: nn.Module) -> torch.optim.Optimizer:
    """SGD or AdamW. With momentum or weight decay the update is several ops per
    parameter; PyTorch's fused kernel does it in one op for all of them (on the
    2-core CPU: 79 instead of 242 us per step for the fast recipe's SGD). Plain
    SGD, the notebook's, is already one op per parameter and stays as it is."""
    fused = (next(model.parameters()).device.type in ("cpu", "cuda")
             and (config.optimizer == "adamw" or config.momentum > 0 or config.weight_decay > 0))
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                 fused=fused or None)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0,
                           weight_decay=config.weight_decay, fused=fused or None)


def make_schedule(config: Config, optimizer: torch.optim.Optimizer,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR | None:
    """Learning-rate factor per step: None for a constant rate, or one cycle
    (linear warm-up from 0, then linear decay to 0 at the last step)."""
    if config.schedule == "constant":
        return None
    total = config.epochs * steps_per_epoch
    warm = max(1, round(config.warmup * total))

    def one_cycle(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total - step) / max(1, total - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle)


class Batches:
    """Shuffled mini-batches of a split that lives on the device, as index slices.

    With `shift`, each image is translated by its own random (dy, dx) in
    [-shift, shift] pixels: one gather from a padded copy made once, no
    per-image Python.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, config: Config):
        self.y, self.batch_size, self.drop_last, self.shift = y, config.batch_size, config.drop_last, config.shift
        n, c, h, w = x.shape
        self.shape = (c, h, w)
        if self.shift:
            s = self.shift
            # Padded with the background value (the minimum after normalisation).
            padded = nn.functional.pad(x, (s, s, s, s), value=float(x.min()))
            self.x = padded.reshape(n * c, (h + 2 * s) * (w + 2 * s))
            rows = torch.arange(h, device=x.device)[:, None] * (w + 2 * s)
            self.window = (rows + torch.arange(w, device=x.device)).flatten()  # top-left crop, flat
        else:
            self.x = x

    def __len__(self) -> int:
        return len(self.starts())

    def starts(self) -> range:
        n = len(self.y)
        return range(0, n - n % self.batch_size if self.drop_last else n, self.batch_size)

    def epoch(self, generator: torch.Generator):
        """Yield (images, labels) for one pass in a fresh random order."""
        n = len(self.y)
        perm = torch.randperm(n, device=self.y.device, generator=generator)
        if self.shift:
            s, width = self.shift, self.shape[2] + 2 * self.shift
            dy, dx = torch.randint(0, 2 * s + 1, (2, n), device=self.y.device, generator=generator)
            offsets = dy * width + dx
        for start in self.starts():
            idx = perm[start:start + self.batch_size]
            if self.shift:
                pixels = self.window + offsets[idx, None]
                xb = torch.gather(self.x[idx], 1, pixels).view(len(idx), *self.shape)
            else:
                xb = self.x[idx]
            yield xb, self.y[idx]


def capture_forward_loss(model: nn.Module, loss_fn: nn.Module, xb: torch.Tensor,
                         yb: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The forward pass and loss (and their backward) captured as CUDA graphs.

    Replaying a graph launches all kernels of a step at once, which is what
    bounds a network this small on a GPU. Only full batches use it.
    """

    class ForwardLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.loss_fn = model, loss_fn

        def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.loss_fn(self.model(x), y)

    return torch.cuda.make_graphed_callables(ForwardLoss(), (xb, yb))


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, schedule, loss_fn: nn.Module,
                batches: Batches, generator: torch.Generator, forward_loss: Callable | None = None,
                progress: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """One pass over the data in shuffled batches; returns the mean batch loss (a device tensor).

    The notebook's loop. `forward_loss` is the CUDA-graph replay of
    loss_fn(model(xb), yb) for full batches; `schedule` is None for a constant rate.
    """
    model.train()
    total = torch.zeros((), device=batches.y.device)  # summed on the device: no sync per step
    for i, (xb, yb) in enumerate(batches.epoch(generator)):
        optimizer.zero_grad()
        if forward_loss is not None and len(yb) == batches.batch_size:
            loss = forward_loss(xb, yb)
        else:
            loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        total += loss.detach()
        if progress is not None:
            progress(i, total)
    return total / len(batches)


def rng_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def metrics_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_FIELDS})
    return buf.getvalue()


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    def num(v: str) -> float | int | None:
        if v == "":
            return None
        return int(v) if v.isdigit() else float(v)

    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return [{k: num(v) for k, v in row.items()} for row in csv.DictReader(f)]


def default_run_dir(config: Config, root: str | os.PathLike = "runs") -> Path:
    """runs/<recipe>-<dataset>, then -2, -3, ... so that no run is overwritten."""
    base = Path(root) / f"{config.recipe}-{config.dataset}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path


def _fmt_epoch(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}", f"train loss {row['train_loss']:.4f}"]
    if row.get("val_accuracy") is not None:
        parts.append(f"val acc {100 * row['val_accuracy']:.2f}%")
    if row.get("test_accuracy") is not None:
        parts.append(f"test acc {100 * row['test_accuracy']:.2f}%")
    parts.append(f"{row['seconds']:.2f}s")
    return "  ".join(parts)


@contextlib.contextmanager
def flush_denormals(device: torch.device):
    """On the CPU, compute with floats below 1.2e-38 taken as zero.

    As the network grows confident, exp() of its log-probabilities underflows
    into denormal numbers, which x86 CPUs process many times slower: on the
    2-core machine the fast recipe's epochs slowed from 0.49 s to 0.84 s as it
    trained, and stayed at 0.5 s with this. Such values are far below the
    float32 rounding error of any sum they join, so the losses are unchanged.
    """
    if device.type != "cpu" or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # PyTorch's default; it offers no way to read the current mode


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# ---------------------------------------------------------------------------
# A whole run

def train(config: Config, *, out: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
          resume: str | os.PathLike | None = None, stop_after: int | None = None,
          log: Callable[[str], None] = lambda line: None, progress: bool = False) -> RunResult:
    """Train `config` (or continue the run in `resume`) and return its summary.

    `log` receives the human-readable lines (config, device, one per epoch).
    `stop_after` ends the run after that epoch as if interrupted (it can be resumed).
    """
    start_epoch, state = 0, None
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / "config.json").is_file():
            raise RunError(f"--resume {run_dir}: not a run directory (config.json is missing)")
        config = Config.from_dict(read_json(run_dir / "config.json"))
        state = load_state(run_dir)
        start_epoch = int(state["epoch"])
        data_dir = data_dir if data_dir is not None else state.get("data_dir") or None
    else:
        config = config.validated()
        run_dir = Path(out) if out is not None else default_run_dir(config)
        if (run_dir / "config.json").exists():
            raise RunError(f"--out {run_dir} already holds a run; continue it with --resume {run_dir} "
                           "or choose another --out")

    device = select_device(config.device)
    log(f"config: {config.to_json()}")
    log(f"run: {run_dir}")
    threads = f" ({torch.get_num_threads()} threads)" if device.type == "cpu" else ""
    log(f"device: {device}{threads}")
    dataset = data_mod.load(config.dataset, data_dir, progress=progress)
    data_dir = str(Path(data_dir).resolve()) if data_dir else None  # recorded: usable from any folder
    log(f"data: {dataset.spec.name} ({dataset.source})")

    # Splits, decided on the CPU by the seed alone: validation is held out of training.
    train_split = dataset.train
    if config.train_size:
        train_split = data_mod.Split(train_split.images[:config.train_size], train_split.labels[:config.train_size])
    val_split = None
    if config.val_size:
        if config.val_size >= len(train_split):
            raise RunError(f"--val-size {config.val_size} leaves no training data ({len(train_split)} examples)")
        order = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(config.seed))
        val_idx, train_idx = order[:config.val_size], order[config.val_size:]
        val_split = data_mod.Split(train_split.images[val_idx], train_split.labels[val_idx])
        train_split = data_mod.Split(train_split.images[train_idx], train_split.labels[train_idx])
    x, y = data_mod.to_device(train_split, device, config.mean, config.std)
    x_test, y_test = data_mod.to_device(dataset.test, device, config.mean, config.std)
    x_val, y_val = data_mod.to_device(val_split, device, config.mean, config.std) if val_split else (None, None)

    torch.manual_seed(config.seed)
    arch = architecture(config, tuple(x.shape[1:]), len(dataset.classes))
    model = build_model(arch).to(device)
    optimizer = make_optimizer(config, model)
    batches = Batches(x, y, config)
    n_steps = len(batches)
    if n_steps == 0:
        raise RunError(f"--batch-size {config.batch_size} with drop_last leaves no batch "
                       f"({len(y)} training examples)")
    schedule = make_schedule(config, optimizer, n_steps)
    loss_fn = loss_function(config)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    rows: list[dict[str, Any]] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(state["schedule"])
        set_rng_state(state["rng"], generator)
        rows = [r for r in read_metrics(run_dir) if r["epoch"] <= start_epoch]
        log(f"resuming {run_dir} after epoch {start_epoch}/{config.epochs}")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config.to_dict())

    forward_loss = None
    if device.type == "cuda" and config.cuda_graph:
        forward_loss = _try_capture(model, loss_fn, x, y, config, log)

    meta = {
        "architecture": arch, "dataset": dataset.spec.name, "classes": list(dataset.classes),
        "normalization": {"mean": config.mean, "std": config.std}, "config": config.to_dict(),
        "data_dir": data_dir,
    }
    last = config.epochs if stop_after is None else min(config.epochs, stop_after)
    summary: dict[str, Any] | None = None
    for epoch in range(start_epoch + 1, last + 1):
        bar = _progress_bar(epoch, config.epochs, n_steps) if progress and sys.stderr.isatty() else None
        synchronize(device)
        t0 = time.perf_counter()
        with flush_denormals(device):
            mean_loss = train_epoch(model, optimizer, schedule, loss_fn, batches, generator,
                                    forward_loss, bar.update if bar else None)
        train_loss = float(mean_loss)  # the one host sync per epoch
        seconds = time.perf_counter() - t0
        if bar:
            bar.close()
        if not math.isfinite(train_loss):
            raise RunError(f"epoch {epoch}: the training loss is {train_loss}; lower --lr "
                           f"(now {config.lr}). The last good checkpoint is in {run_dir}")
        row = {"epoch": epoch, "train_loss": train_loss, "val_accuracy": None, "test_accuracy": None,
               "lr": optimizer.param_groups[0]["lr"], "seconds": seconds}
        if x_val is not None:
            row["val_accuracy"] = float(accuracy(model, x_val, y_val))
        if config.eval_every_epoch or epoch == config.epochs:
            row["test_accuracy"] = float(accuracy(model, x_test, y_test))
        rows.append(row)
        log(_fmt_epoch(row, config.epochs))
        summary = _summary(config, rows, device, epoch)
        # Resume state first (self-contained), then the published files.
        save_state(run_dir, {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "schedule": schedule.state_dict() if schedule else {}, "rng": rng_state(generator),
                             "data_dir": data_dir or ""})
        write_text(run_dir / "metrics.csv", metrics_csv(rows))
        save_checkpoint(run_dir, model, {**meta, "metrics": summary_metrics(summary)})
        write_json(run_dir / "summary.json", summary)
    if summary is None:  # nothing left to train: report the run as it stands
        summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").exists() else {}
    return RunResult(run_dir, summary, model)


def _try_capture(model, loss_fn, x, y, config, log):
    try:
        idx = torch.arange(config.batch_size, device=y.device) % len(y)
        graphed = capture_forward_loss(model, loss_fn, x[idx], y[idx])
        log("cuda graph: forward and backward captured (turn off with --no-cuda-graph)")
        return graphed
    except Exception as e:  # noqa: BLE001 - capture is an optimisation; eager always works
        log(f"cuda graph: capture failed ({type(e).__name__}: {e}); training eagerly")
        return None


def _summary(config: Config, rows: list[dict[str, Any]], device: torch.device, epoch: int) -> dict[str, Any]:
    return {
        "epochs": epoch,
        "finished": epoch == config.epochs,
        "train_loss": [r["train_loss"] for r in rows],
        "test_accuracy": rows[-1]["test_accuracy"],
        "val_accuracy": rows[-1]["val_accuracy"],
        "train_seconds": sum(r["seconds"] for r in rows),
        "device": str(device),
        "torch": torch.__version__,
        "config": config.to_dict(),
    }


def summary_metrics(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary[k] for k in ("epochs", "train_loss", "test_accuracy", "val_accuracy", "train_seconds")}


def _progress_bar(epoch: int, epochs: int, n_steps: int):
    from tqdm import tqdm

    bar = tqdm(total=n_steps, desc=f"epoch {epoch}/{epochs}", leave=False, file=sys.stderr, unit="batch")

    class Bar:
        # Reading the running loss syncs with the device, so only every few steps.
        def update(self, i: int, total: torch.Tensor) -> None:
            if i % 50 == 49 or i == n_steps - 1:
                bar.set_postfix(loss=f"{float(total) / (i + 1):.4f}", refresh=False)
                bar.update(i + 1 - bar.n)

        def close(self) -> None:
            bar.close()

    return Bar()
