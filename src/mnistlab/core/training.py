"""Training: the notebook's loop (zero_grad, forward, loss, backward, step), made fast
by where the data lives (one normalised tensor on the device, batches as
shuffled index slices) and how rarely Python waits (losses summed on the device,
read once per epoch).

`train(config)` starts a run and `resume(run_dir)` continues one; both are a
few calls to the building blocks below (data, model and optimiser, the epoch
loop, the commit). The run directory itself is `runs.py`'s business.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..base import data as data_mod
from ..commands import progress as progress_mod
from . import runs
from ..base.config import RECIPES, Config
from ..base.devices import describe, flush_denormals, select_device, synchronize
from ..base.errors import Interrupted, RunError, shown
from .evaluation import accuracy
from ..base.models import architecture, build_model, loss_function

Log = Callable[[str], None]


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    model: nn.Module
    rows: list[dict[str, Any]]


# ---------------------------------------------------------------------------
# Building blocks

def make_optimizer(params, optimizer: str = "sgd", lr: float = 0.003, momentum: float = 0.0,
                   nesterov: bool = False, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD or AdamW. With momentum or weight decay the update is several ops per
    parameter, which PyTorch's fused kernel does in one; plain SGD, the
    notebook's, is already one op per parameter and stays as it is."""
    params = list(params)
    fused = (params[0].device.type in ("cpu", "cuda")
             and (optimizer == "adamw" or momentum > 0 or weight_decay > 0))
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0,
                           weight_decay=weight_decay, fused=fused or None)


def make_schedule(optimizer: torch.optim.Optimizer, schedule: str, warmup: float,
                  total_steps: int) -> torch.optim.lr_scheduler.LambdaLR | None:
    """Learning-rate factor per step: None for a constant rate, or one cycle
    (linear warm-up from 0, then linear decay to 0 at the last step)."""
    if schedule == "constant":
        return None
    warm = max(1, round(warmup * total_steps))

    def one_cycle(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, one_cycle)


class Batches:
    """Shuffled mini-batches of a split that lives on the device, as index slices.

    With `shift`, each image is translated by its own random (dy, dx) in
    [-shift, shift] pixels: one gather from a padded copy made once, no
    per-image Python.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, shift: int = 0, drop_last: bool = False):
        self.y, self.batch_size, self.drop_last, self.shift = y, batch_size, drop_last, shift
        n, c, h, w = x.shape
        self.shape = (c, h, w)
        if shift:
            # Padded with the background value (the minimum after normalisation).
            padded = nn.functional.pad(x, (shift,) * 4, value=float(x.min()))
            self.x = padded.reshape(n * c, (h + 2 * shift) * (w + 2 * shift))
            rows = torch.arange(h, device=x.device)[:, None] * (w + 2 * shift)
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


@dataclass
class Splits:
    """The splits of one dataset on the training device, normalised, and where they came from."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: torch.Tensor | None
    y_val: torch.Tensor | None
    dataset: data_mod.Dataset


def load_splits(config: Config, data_dir: str | os.PathLike | None, device: torch.device,
                progress: bool = False) -> Splits:
    """The dataset on `device`; the validation split is held out of training, chosen by the data seed alone."""
    dataset = data_mod.load(config.dataset, data_dir, progress=progress)
    train_split = dataset.train
    if config.train_size:
        train_split = data_mod.Split(train_split.images[:config.train_size], train_split.labels[:config.train_size])
    val_split = None
    if config.val_size:
        if config.val_size >= len(train_split):
            raise RunError(f"--val-size {config.val_size} leaves no training data ({len(train_split)} examples)")
        order = torch.randperm(len(train_split), generator=torch.Generator().manual_seed(config.order_seed()))
        val_idx, train_idx = order[:config.val_size], order[config.val_size:]
        val_split = data_mod.Split(train_split.images[val_idx], train_split.labels[val_idx])
        train_split = data_mod.Split(train_split.images[train_idx], train_split.labels[train_idx])
    x, y = data_mod.to_device(train_split, device, config.mean, config.std)
    x_test, y_test = data_mod.to_device(dataset.test, device, config.mean, config.std)
    x_val, y_val = data_mod.to_device(val_split, device, config.mean, config.std) if val_split else (None, None)
    return Splits(x, y, x_test, y_test, x_val, y_val, dataset)


@dataclass
class Trainee:
    """A network with everything that changes as it trains."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR | None
    loss_fn: nn.Module
    batches: Batches
    generator: torch.Generator
    architecture: dict[str, Any]

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict() if self.schedule else {},
                "rng": rng_state(self.generator)}

    def reduce(self, mean_loss: torch.Tensor) -> torch.Tensor:
        """The epoch's mean loss over every process training this network (one here; see distributed.py)."""
        return mean_loss

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return accuracy(self.model, x, y)

    def restore(self, state: dict[str, Any]) -> None:
        """Load a commit (checked by runs.check_state); RunError unless it fits this trainee exactly."""
        fresh_groups = self.optimizer.state_dict()["param_groups"]
        try:
            # A schedule saved by another torch version may lack entries; it may never add any
            # (LambdaLR.load_state_dict sets whatever attributes it is given).
            _check_fits(state["schedule"], self.schedule.state_dict() if self.schedule else {}, "schedule",
                        partial=True)
            fresh_rng = rng_state(self.generator)
            _check_fits({k: state["rng"][k] for k in ("torch", "generator")},
                        {k: fresh_rng[k] for k in ("torch", "generator")}, "rng")
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            _check_optimizer(self.optimizer, fresh_groups)
            if self.schedule is not None:
                self.schedule.load_state_dict(state["schedule"])
            set_rng_state(state["rng"], self.generator)
        except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as e:
            raise RunError(f"the resume state does not fit the run's config ({str(e).splitlines()[0]})") from None


# What the optimiser's groups may differ in from a fresh optimiser's: the rate the
# schedule moves, and how the update is computed (which depends on the device).
_GROUP_FREE = {"lr", "params", "foreach", "fused", "capturable", "differentiable"}


def _check_optimizer(optimizer: torch.optim.Optimizer, fresh_groups: list[dict[str, Any]]) -> None:
    """ValueError unless the loaded optimiser has the config's hyperparameters, a finite rate >= 0,
    and per-parameter state (momentum, moments) of each parameter's shape, finite."""
    groups = optimizer.param_groups
    for group, fresh in zip(groups, fresh_groups):
        for key, value in fresh.items():
            if key not in _GROUP_FREE and not _same(group.get(key), value):
                raise ValueError(f"optimizer {key} is {shown(group.get(key))}, the config gives {value!r}")
        lr = group.get("lr")
        if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"optimizer lr is {shown(lr)}")
    for param, entries in optimizer.state.items():
        for key, value in entries.items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor) or (value.dim() and value.shape != param.shape):
                raise ValueError(f"optimizer {key} does not fit a parameter of shape {list(param.shape)}")
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise ValueError(f"optimizer {key} holds NaN or infinite values")


def _same(a: Any, b: Any) -> bool:
    """a == b for plain values (numbers, bools, None, tuples of them), False for anything of another type."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _check_fits(loaded: Any, fresh: Any, where: str, partial: bool = False) -> None:
    """ValueError unless `loaded` has `fresh`'s structure: the same keys (with `partial`, some of
    them) and lengths, tensors of the same shape and dtype, finite numbers >= 0 where `fresh` has
    numbers, the same type elsewhere."""
    if isinstance(fresh, dict):
        if not (isinstance(loaded, dict) and (set(loaded) <= set(fresh) if partial else set(loaded) == set(fresh))):
            raise ValueError(f"{where} does not have the entries {', '.join(map(str, fresh))}")
        for key in loaded:
            _check_fits(loaded[key], fresh[key], f"{where}.{key}")
    elif isinstance(fresh, (list, tuple)):
        if not (isinstance(loaded, (list, tuple)) and len(loaded) == len(fresh)):
            raise ValueError(f"{where} is not a list of {len(fresh)}")
        for k, (a, b) in enumerate(zip(loaded, fresh)):
            _check_fits(a, b, f"{where}[{k}]")
    elif isinstance(fresh, torch.Tensor):
        if not (isinstance(loaded, torch.Tensor) and loaded.shape == fresh.shape and loaded.dtype == fresh.dtype):
            raise ValueError(f"{where} is not a {fresh.dtype} tensor of shape {list(fresh.shape)}")
    elif isinstance(fresh, (int, float)) and not isinstance(fresh, bool):
        if not (isinstance(loaded, (int, float)) and not isinstance(loaded, bool) and math.isfinite(loaded)
                and loaded >= 0):
            raise ValueError(f"{where} is {shown(loaded)}, not a finite number >= 0")
    elif type(loaded) is not type(fresh):
        raise ValueError(f"{where} is {type(loaded).__name__}, not {type(fresh).__name__}")


def build(config: Config, splits: Splits, device: torch.device) -> Trainee:
    """Model, optimiser, schedule, loss and batches, initialised from the seed."""
    torch.manual_seed(config.seed)
    arch = architecture(config.model, tuple(splits.x.shape[1:]), len(splits.dataset.classes), config.hidden,
                        config.activation, config.output)
    model = build_model(arch).to(device)
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr, config.momentum,
                               config.nesterov, config.weight_decay)
    batches = Batches(splits.x, splits.y, config.batch_size, config.shift, config.drop_last)
    if len(batches) == 0:
        raise RunError(f"--batch-size {config.batch_size} with drop_last leaves no batch "
                       f"({len(splits.y)} training examples)")
    schedule = make_schedule(optimizer, config.schedule, config.warmup, config.epochs * len(batches))
    generator = torch.Generator(device=device).manual_seed(config.order_seed())
    return Trainee(model, optimizer, schedule, loss_function(config.output, config.label_smoothing), batches,
                   generator, arch)


def checkpoint_meta(config: Config, trainee: Trainee, dataset: data_mod.Dataset,
                    data_dir: str | os.PathLike | None) -> dict[str, Any]:
    """What model.json holds besides the metrics: enough to rebuild and use the network alone."""
    return {"architecture": trainee.architecture, "dataset": dataset.spec.name, "classes": list(dataset.classes),
            "normalization": {"mean": config.mean, "std": config.std}, "config": config.to_dict(),
            "data_dir": str(Path(data_dir).resolve()) if data_dir else None}


def _try_capture(trainee: Trainee, x: torch.Tensor, y: torch.Tensor, log: Log):
    try:
        idx = torch.arange(trainee.batches.batch_size, device=y.device) % len(y)
        graphed = capture_forward_loss(trainee.model, trainee.loss_fn, x[idx], y[idx])
        log("cuda graph: forward and backward captured (turn off with --no-cuda-graph)")
        return graphed
    except Exception as e:  # noqa: BLE001 - capture is an optimisation; eager always works
        log(f"cuda graph: capture failed ({type(e).__name__}: {e}); training eagerly")
        return None


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']:>{len(str(epochs))}}/{epochs}", f"train loss {row['train_loss']:.4f}"]
    if row.get("val_accuracy") is not None:
        parts.append(f"val acc {100 * row['val_accuracy']:.2f}%")
    if row.get("test_accuracy") is not None:
        parts.append(f"test acc {100 * row['test_accuracy']:.2f}%")
    parts.append(f"{row['seconds']:.2f}s")
    return "  ".join(parts)


def diverged(run: runs.Run, epoch: int, loss: float) -> str:
    """What a non-finite loss means for the user: what was kept, and how to start again."""
    kept = (f"{runs.epochs_text(run.epoch).capitalize()} kept in {run.path}" if run.epoch else
            f"Nothing was kept; start again with: mnistlab train --out {run.path} --lr {run.config.lr / 10:g} ...")
    return f"epoch {epoch}: the training loss is {loss}; the run diverged, so lower --lr (now {run.config.lr}). {kept}"


def fit(run: runs.Run, trainee: Trainee, splits: Splits, device: torch.device, meta: dict[str, Any],
        last: int, log: Log, show_progress: bool = False) -> list[dict[str, Any]]:
    """Train epochs run.epoch+1 .. last, committing each to the run; return all metric rows."""
    config, rows = run.config, run.rows
    forward_loss = None
    if device.type == "cuda" and config.cuda_graph:
        forward_loss = _try_capture(trainee, splits.x, splits.y, log)
    for epoch in range(run.epoch + 1, last + 1):
        bar = progress_mod.for_epoch(epoch, config.epochs, len(trainee.batches), log) if show_progress else None
        synchronize(device)
        t0 = time.perf_counter()
        with flush_denormals(device):
            mean_loss = train_epoch(trainee.model, trainee.optimizer, trainee.schedule, trainee.loss_fn,
                                    trainee.batches, trainee.generator, forward_loss, bar.update if bar else None)
        train_loss = float(trainee.reduce(mean_loss))  # the one host sync per epoch
        seconds = time.perf_counter() - t0
        if bar:
            bar.close()
        if not math.isfinite(train_loss):
            raise RunError(diverged(run, epoch, train_loss))
        row = {"epoch": epoch, "train_loss": train_loss, "val_accuracy": None, "test_accuracy": None,
               "lr": trainee.optimizer.param_groups[0]["lr"], "seconds": seconds}
        if splits.x_val is not None:
            row["val_accuracy"] = trainee.accuracy(splits.x_val, splits.y_val)
        if config.eval_every_epoch or epoch == config.epochs:
            row["test_accuracy"] = trainee.accuracy(splits.x_test, splits.y_test)
        rows.append(row)
        log(epoch_line(row, config.epochs))
        run.commit(epoch, rows, trainee.state(), meta, str(device))
    return rows


# ---------------------------------------------------------------------------
# A whole run

def _logger(log: Log | None, verbose: bool) -> Log:
    if log is not None:
        return log
    return (lambda line: print(line, flush=True)) if verbose else (lambda line: None)


def recipe_line(config: Config) -> str:
    """`recipe fast, with lr 0.2, epochs 3`: the recipe and what differs from it."""
    base = RECIPES.get(config.recipe)
    changed = config.differences(base) if base else {}
    shown = ", ".join(f"{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in changed.items())
    return f"recipe {config.recipe}" + (f", with {shown}" if shown else "")


def train(config: Config, *, out: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
          stop_after: int | None = None, log: Log | None = None, verbose: bool = False,
          progress: bool = False) -> RunResult:
    """Train `config` into a new run directory (`out`, default runs/<recipe>-<dataset>[-N]).

    `log` receives the human-readable lines (or `verbose=True` prints them);
    `progress` shows progress within epochs; `stop_after` ends the run after
    that epoch as if interrupted (it can be resumed).
    """
    config = config.validated()
    device = select_device(config.device)
    log = _logger(log, verbose)
    with runs.create(out if out is not None else runs.default_path(config), config) as run:
        log(f"run: {run.path}")
        log(recipe_line(config))
        return _continue(run, device, data_dir, stop_after, log, progress)


def resume(run_dir: str | os.PathLike, *, epochs: int | None = None, data_dir: str | os.PathLike | None = None,
           stop_after: int | None = None, log: Log | None = None, verbose: bool = False,
           progress: bool = False) -> RunResult:
    """Continue the run in `run_dir` from its last committed epoch (to `epochs` in all, if given)."""
    log = _logger(log, verbose)
    with runs.open_run(run_dir) as run:
        if epochs is not None:
            run.set_epochs(epochs)
        device = select_device(run.config.device)
        log(f"run: {run.path} (resuming after epoch {run.epoch}/{run.config.epochs})")
        if data_dir is None and run.state:
            data_dir = _recorded_data_dir(run.state["meta"].get("data_dir"), log)
        return _continue(run, device, data_dir, stop_after, log, progress)


def _recorded_data_dir(recorded: str | None, log: Log) -> str | None:
    """The folder the run was trained from, if it still exists; else None (the usual places)."""
    if recorded and not Path(recorded).is_dir():
        log(f"data: {recorded} (recorded in the run) is gone; looking in the usual places")
        return None
    return recorded


def _continue(run: runs.Run, device: torch.device, data_dir: str | os.PathLike | None, stop_after: int | None,
              log: Log, progress: bool) -> RunResult:
    """Load the data, rebuild the trainee (restoring the last commit), and train to the end."""
    config = run.config
    if config.ensemble > 1:  # K networks trained batched into one run
        from .batched import continue_ensemble

        log(f"device: {describe(device)}")
        return continue_ensemble(run, device, data_dir, stop_after, log, progress)
    try:
        log(f"device: {describe(device)}")
        splits = load_splits(config, data_dir, device, progress)
        log(f"data: {splits.dataset.spec.name} ({splits.dataset.source})")
        trainee = build(config, splits, device)
        meta = checkpoint_meta(config, trainee, splits.dataset, data_dir)
        if run.state:
            trainee.restore(run.state)
        else:  # epoch 0: a run stopped in its first epoch starts again exactly as it began
            run.commit(0, [], trainee.state(), meta, str(device))
        last = config.epochs if stop_after is None else min(config.epochs, stop_after)
        rows = fit(run, trainee, splits, device, meta, last, log, progress)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {run.kept()}") from None
    return RunResult(run.path, runs.summary(config, run.state), trainee.model, rows)
