"""One network training: the notebook's step (zero_grad, forward, loss, backward,
step) and the pieces around it, made fast by where the data lives (one
normalised tensor on the device, batches as shuffled index slices).

`Trainee` is one network with its optimiser, schedule, loss, batches and batch
order; `build` makes it from a config, `Trainee.restore` puts a commit back
into it. The loop that drives its step, and the run it commits to, are the
engine's (core/engine.py); K networks at once are core/batched.py's, one
network across processes core/distributed.py's.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..base import data as data_mod
from ..base.config import Config
from ..base.errors import RunError, shown
from ..base.models import architecture, build_model, loss_function
from .evaluation import accuracy
from .fused import FusedMLP, fusable


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
            # index_select, not x[idx]: the same rows, copied 2.5x faster (advanced indexing's general path)
            if self.shift:
                pixels = self.window + offsets[idx, None]
                xb = torch.gather(self.x.index_select(0, idx), 1, pixels).view(len(idx), *self.shape)
            else:
                xb = self.x.index_select(0, idx)
            yield xb, self.y.index_select(0, idx)


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
    fingerprint: str  # of the whole dataset as loaded (Dataset.fingerprint)


def load_splits(config: Config, data_dir: str | os.PathLike | None, device: torch.device,
                progress: bool = False, any_data: bool = False) -> Splits:
    """The dataset on `device`; the validation split is held out of training, chosen by the data seed alone.

    `progress`: a download's progress bar on stderr. `any_data`: files recognised as another dataset than
    the config's are used all the same.
    """
    dataset = data_mod.load(config.dataset, data_dir, progress=progress, any_data=any_data, skip_bad=config.skip_bad)
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
    return Splits(x, y, x_test, y_test, x_val, y_val, dataset, dataset.fingerprint)


@dataclass
class Trainee:
    """One network with everything that changes as it trains, and its step.

    The engine's loop (core/engine.py) calls, for each batch, the notebook's
    five lines through this interface: zero_grad, loss, backward, step. K
    networks at once (core/batched.py's Group) answer the same calls.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR | None
    loss_fn: nn.Module
    batches: Batches
    generator: torch.Generator
    architecture: dict[str, Any]
    forward_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    # The MLP's step written by hand (core/fused.py), on the CPU: the same losses and updates as autograd's
    # to float rounding, about 1.5x faster at batch 64. None: autograd, as the notebook writes it.
    fast: FusedMLP | None = field(default=None, repr=False)
    members = 1

    # -- the step --------------------------------------------------------------

    def train(self) -> None:
        self.model.train()

    def zero_grad(self) -> None:
        (self.fast or self.optimizer).zero_grad()

    def loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss. `forward_loss` replays it as a CUDA graph (full batches only)."""
        if self.fast is not None:
            return self.fast.loss(xb, yb)
        if self.forward_loss is not None and len(yb) == self.batches.batch_size:
            return self.forward_loss(xb, yb)
        return self.loss_fn(self.model(xb), yb)

    def backward(self, loss: torch.Tensor) -> None:
        if self.fast is not None:
            self.fast.backward(loss)
        else:
            loss.backward()

    def step(self, loss: torch.Tensor, i: int) -> None:
        """Update the weights after batch `i` of the epoch; then the schedule moves the rate."""
        (self.fast or self.optimizer).step()
        if self.schedule is not None:
            self.schedule.step()

    # -- around the epoch ---------------------------------------------------------

    def begin_epoch(self, epoch: int, training: list[bool]) -> None:
        """One network always trains its next epoch (several members may have to wait: batched.Group)."""

    def reduce(self, mean_loss: torch.Tensor) -> torch.Tensor:
        """The epoch's mean loss over every process training this network (one here; see distributed.py)."""
        return mean_loss

    def accuracies(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], float | None]:
        """The network's accuracy (a list of one, like K members'), and no ensemble accuracy."""
        return [accuracy(self.model, x, y)], None

    def lr(self, k: int = 0) -> float:
        """The rate the next step will use (what the epoch's metric row records)."""
        return self.optimizer.param_groups[0]["lr"]

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "schedule": self.schedule.state_dict() if self.schedule else {},
                "rng": rng_state(self.generator)}

    def member_state(self, k: int = 0) -> dict[str, Any]:
        """What a run of this network commits (the same as `state`: there is one member)."""
        return self.state()

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
    loss_fn = loss_function(config.output, config.label_smoothing)
    fast = FusedMLP(model, optimizer, loss_fn) if device.type == "cpu" and fusable(model, loss_fn) is None else None
    return Trainee(model, optimizer, schedule, loss_fn, batches, generator, arch, fast=fast)


def checkpoint_meta(config: Config, arch: dict[str, Any], splits: Splits,
                    data_dir: str | os.PathLike | None, steps_per_epoch: int) -> dict[str, Any]:
    """What model.json holds besides the metrics: enough to rebuild and use the network alone, and what
    it was trained on (the folder, and the data's fingerprint, which a resume holds the data to; the
    optimiser steps an epoch takes, which tell a run that has had too few to learn from one that cannot)."""
    return {"architecture": arch, "dataset": splits.dataset.spec.name, "classes": list(splits.dataset.classes),
            "normalization": {"mean": config.mean, "std": config.std}, "config": config.to_dict(),
            "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
            "data_fingerprint": splits.fingerprint, "steps_per_epoch": steps_per_epoch}
