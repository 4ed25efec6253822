"""Batched training: K networks of one architecture trained at once, as one.

The K networks' tensors are stacked along a new first dimension
(`torch.func.stack_module_state`) and one call computes all K outputs (`vmap`
over `functional_call`), so a step is a few large operations instead of K
rounds of small ones: on a GPU, K small networks cost little more than one.

A `Group` answers the engine's loop (core/engine.py) exactly as one network
(`training.Trainee`) does: zero the gradients, forward and loss, backward,
step, once for all K. Each member's loss is its own; their sum is
differentiated, so each member gets the gradient of its own loss. The step is
torch.optim's SGD (momentum, Nesterov, weight decay) or AdamW, written over the
stacked tensors with a learning rate, momentum, Nesterov flag, weight decay and
schedule per member (`MEMBER_FIELDS`).

What members share: the architecture, the data, and one batch order. Each
member is initialised from its own seed exactly as `training.build` does it,
but the validation split, the batch order and the shifts come from the data
seed of the group (`Config.data_seed`, for a sweep the first seed of the
group). So a member equals the single run of its own config *with that data
seed* (`mnistlab train --seed 3 --data-seed 0`), and differs from
`mnistlab train --seed 3`, whose batches come in another order.

A member whose loss is not finite is frozen from that step on (its update
masked out, marked diverged); the others go on as if it were not there.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, fields
from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from ..base.config import Config
from ..base.devices import count_dtype
from ..base.errors import RunError
from ..base.models import architecture, build_model, loss_function, mean_log_probabilities
from .evaluation import EVAL_BATCH
from .training import Batches, Splits, make_optimizer, make_schedule, rng_state, set_rng_state

Log = Callable[[str], None]

# What may differ between the members of one batched group; every other field is shared.
MEMBER_FIELDS = ("recipe", "seed", "lr", "momentum", "nesterov", "weight_decay", "schedule", "warmup")
ADAMW_BETAS = (0.9, 0.999)  # torch.optim.AdamW's defaults, which make_optimizer keeps
ADAMW_EPS = 1e-8
EVAL_ROWS = 65536  # member-images per evaluation forward pass (K members x batch): bounds memory


def group_key(config: Config) -> Config:
    """The config with the per-member fields reset: configs with equal keys can train as one group."""
    defaults = {f.name: f.default for f in fields(Config) if f.name in MEMBER_FIELDS}
    return config.replace(**defaults)


# ---------------------------------------------------------------------------
# K networks as stacked tensors, and their optimiser

class Stack:
    """K networks of one architecture as stacked tensors, with an optimiser state per member."""

    def __init__(self, configs: list[Config], arch: dict[str, Any], device: torch.device, steps_per_epoch: int):
        if len({group_key(c) for c in configs}) != 1:
            raise ValueError("the members of a batched group must differ only in " + ", ".join(MEMBER_FIELDS))
        self.configs, self.k, self.device = configs, len(configs), device
        self.steps_per_epoch = steps_per_epoch
        models, self.templates = [], []
        for c in configs:
            torch.manual_seed(c.seed)  # as training.build: member k starts as the single run with seed k
            model = build_model(arch).to(device)
            models.append(model)
            self.templates.append(_template_state(model, c, steps_per_epoch))
        self.params, self.buffers = stack_module_state(models)
        self.base = copy.deepcopy(models[0]).to("meta")  # the structure functional_call runs the tensors through
        c = configs[0]
        self.adamw = c.optimizer == "adamw"
        self.loss_fn = loss_function(c.output, c.label_smoothing)
        self.output = c.output

        def per_member(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device)

        self.lr = per_member([x.lr for x in configs])
        self.momentum = per_member([x.momentum for x in configs])
        nesterov = [x.nesterov and x.momentum > 0 for x in configs]
        self.nesterov = torch.tensor(nesterov, device=device)
        self.nesterov_all, self.nesterov_any = all(nesterov), any(nesterov)
        self.weight_decay = per_member([x.weight_decay for x in configs])
        self.uses_momentum = any(x.momentum > 0 for x in configs)
        self.uses_weight_decay = any(x.weight_decay > 0 for x in configs)
        self.factors = [_schedule_factor(x, x.epochs * steps_per_epoch) for x in configs]
        self.moments: dict[str, dict[str, torch.Tensor]] = {
            name: {key: torch.zeros_like(p) for key in self._moment_keys()} for name, p in self.params.items()}
        self.steps = torch.zeros(self.k, dtype=torch.int64, device=device)  # optimiser steps taken, per member
        self.training = torch.ones(self.k, dtype=torch.bool, device=device)  # updated this epoch
        self.everyone = True  # every member trains this epoch (none waits)
        self.grads: dict[str, torch.Tensor] = {}
        self.diverged = torch.zeros(self.k, dtype=torch.bool, device=device)
        self._loss = torch.vmap(self._member_loss, in_dims=(0, 0, None, None))
        self._forward = torch.vmap(self._member_forward, in_dims=(0, 0, None))

    def _moment_keys(self) -> tuple[str, ...]:
        if self.adamw:
            return ("exp_avg", "exp_avg_sq")
        return ("momentum_buffer",) if self.uses_momentum else ()

    # -- forward and loss -------------------------------------------------

    def _member_forward(self, params: dict, buffers: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def _member_loss(self, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self._member_forward(params, buffers, x), y)

    def train(self, mode: bool = True) -> None:
        self.base.train(mode)  # batch norm reads the mode from the module functional_call runs

    def zero_grad(self) -> None:
        self.grads = {}

    def backward(self, losses: torch.Tensor) -> None:
        """Each member's gradient of its own loss: the gradient of their sum.

        Taken with autograd.grad rather than into `.grad`: the gradients of the
        stacked weights come out transposed, and storing them as `.grad` would
        copy each into the weights' layout, every step.
        """
        self.grads = dict(zip(self.params, torch.autograd.grad(losses.sum(), list(self.params.values()))))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each member's loss on the same batch, shape (K,)."""
        return self._loss(self.params, self.buffers, x, y)

    @torch.no_grad()
    def log_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's log-probabilities, shape (K, N, classes), in eval mode."""
        was = self.base.training
        self.train(False)
        try:
            out = self._forward(self.params, self.buffers, x)
        finally:
            self.train(was)
        return out if self.output == "log_softmax" else torch.log_softmax(out, dim=-1)

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], float]:
        """Each member's accuracy, and the accuracy of their mean probabilities (the ensemble's)."""
        chunk = max(64, min(EVAL_BATCH, EVAL_ROWS // self.k))
        correct = torch.zeros(self.k, dtype=torch.int64, device=x.device)
        together = torch.zeros((), dtype=torch.int64, device=x.device)
        for i in range(0, len(x), chunk):
            logp, yb = self.log_probabilities(x[i:i + chunk]), y[i:i + chunk]
            correct += (logp.argmax(dim=-1) == yb).sum(dim=1)
            together += (mean_log_probabilities(logp).argmax(dim=-1) == yb).sum()
        return [c / len(y) for c in correct.tolist()], int(together) / len(y)

    # -- the step ----------------------------------------------------------

    def begin_epoch(self, training: list[bool]) -> None:
        """Which members train this epoch; the others (ahead of the group after an interruption) wait, frozen."""
        self.training.copy_(torch.tensor(training, device=self.device))
        self.everyone = all(training)

    @torch.no_grad()
    def step(self, losses: torch.Tensor, lr: torch.Tensor) -> None:
        """Update every member still training with its own hyper-parameters and rate `lr` (K,).

        A member whose loss is not finite is not updated from then on (its rate
        is 0; its weights are not kept beyond its last committed epoch). When
        some members wait this epoch, every update is masked so that theirs stay
        exactly as they are; otherwise the updates are in place, the fewest
        passes over the weights (on a CPU, the step is bound by memory traffic).
        """
        finite = torch.isfinite(losses)
        self.diverged |= self.training & ~finite
        self.training &= finite
        self.steps += self.training
        rate = lr * self.training
        for name, p in self.params.items():
            shape = (self.k,) + (1,) * (p.dim() - 1)
            g = self.grads[name]
            if self.everyone:
                (self._adamw if self.adamw else self._sgd)(name, p, g, rate.view(shape), shape)
            else:
                new, old = p.clone(), {key: t.clone() for key, t in self.moments[name].items()}
                (self._adamw if self.adamw else self._sgd)(name, new, g, rate.view(shape), shape)
                active = self.training.view(shape)
                p.copy_(torch.where(active, new, p))
                for key, t in self.moments[name].items():
                    t.copy_(torch.where(active, t, old[key]))

    def _sgd(self, name: str, p: torch.Tensor, g: torch.Tensor, rate: torch.Tensor, shape: tuple) -> None:
        # torch.optim.SGD with dampening 0: d = g + wd p; b = m b + d; d = d + m b (Nesterov) or b; p -= lr d.
        # A first step's b = d, as torch's clone, since b starts at zero. `g` is ours to change.
        if self.uses_weight_decay:
            g = g.addcmul_(p, self.weight_decay.view(shape))
        if self.uses_momentum:
            buf = self.moments[name]["momentum_buffer"]
            m = self.momentum.view(shape)
            buf.mul_(m).add_(g)
            if self.nesterov_all:
                g = g.addcmul_(buf, m)
            elif self.nesterov_any:
                g = torch.where(self.nesterov.view(shape), g.addcmul(buf, m), buf)
            else:
                g = buf
        p.addcmul_(g, rate, value=-1)

    def _adamw(self, name: str, p: torch.Tensor, g: torch.Tensor, rate: torch.Tensor, shape: tuple) -> None:
        # torch.optim.AdamW: p *= 1 - lr wd; m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2;
        # p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
        beta1, beta2 = ADAMW_BETAS
        exp_avg, exp_avg_sq = self.moments[name]["exp_avg"], self.moments[name]["exp_avg_sq"]
        exp_avg.lerp_(g, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        wide = count_dtype(self.device)  # the bias corrections in double, as torch computes them on the host
        t = self.steps.to(wide).clamp(min=1)  # a member that never stepped has no update to correct
        step_size = (rate.view(-1).to(wide) / (1 - beta1 ** t)).to(p.dtype).view(shape)
        bias2_sqrt = (1 - beta2 ** t).sqrt().to(p.dtype).view(shape)
        p.mul_(1 - rate * self.weight_decay.view(shape))
        p.sub_(exp_avg / (exp_avg_sq.sqrt() / bias2_sqrt + ADAMW_EPS) * step_size)

    # -- the learning rate --------------------------------------------------

    def lr_table(self, epoch: int) -> torch.Tensor:
        """Each member's rate for each step of `epoch`, shape (steps, K): base rate x schedule factor."""
        steps = range((epoch - 1) * self.steps_per_epoch, epoch * self.steps_per_epoch)
        columns: dict[Any, list[float]] = {}  # members with the same schedule share one column of factors
        table = []
        for c, factor in zip(self.configs, self.factors):
            key = (c.schedule, c.warmup, c.epochs)
            if factor is not None and key not in columns:
                columns[key] = [factor(t) for t in steps]
            table.append([c.lr * f for f in columns[key]] if factor is not None else [c.lr] * len(steps))
        return torch.tensor(table, dtype=torch.float32).T.contiguous().to(self.device)

    def lr_after(self, k: int, steps: int) -> float:
        """Member k's rate after `steps` steps, as its optimizer's param_groups[0]['lr'] would say."""
        c, factor = self.configs[k], self.factors[k]
        return c.lr * factor(steps) if factor is not None else c.lr

    # -- members in and out, in the format of a single run ------------------

    def member_model(self, k: int) -> dict[str, torch.Tensor]:
        return {name: t[k].detach().clone() for name, t in (*self.params.items(), *self.buffers.items())}

    def member_training_state(self, k: int, steps: int) -> dict[str, Any]:
        """Member k's model, optimizer and schedule as a single run's state holds them (training.Trainee.state)."""
        optimizer, schedule = copy.deepcopy(self.templates[k])
        lr = self.lr_after(k, steps)
        if steps:
            per_param = {}
            for i, name in enumerate(self.params):
                entry = {key: self.moments[name][key][k].detach().clone() for key in self._moment_keys()
                         if key != "momentum_buffer" or self.configs[k].momentum > 0}
                if self.adamw:
                    entry["step"] = torch.tensor(float(steps))
                if entry:
                    per_param[i] = entry
            optimizer["state"] = per_param
        optimizer["param_groups"][0]["lr"] = lr
        if schedule:
            schedule.update(last_epoch=steps, _step_count=steps + 1, _last_lr=[lr])
        return {"model": self.member_model(k), "optimizer": optimizer, "schedule": schedule}

    @torch.no_grad()
    def load_member(self, k: int, state: dict[str, Any], steps: int) -> None:
        """Put a single run's committed state (model and optimizer) into member k."""
        try:
            model = state["model"]
            if set(model) != set(self.params) | set(self.buffers):
                raise ValueError(f"expected the tensors {sorted(set(self.params) | set(self.buffers))}")
            for name, t in (*self.params.items(), *self.buffers.items()):
                t[k].copy_(model[name])
            saved = state["optimizer"]["state"]
            for i, name in enumerate(self.params):
                for key in self._moment_keys():
                    if key in saved.get(i, {}):
                        self.moments[name][key][k].copy_(saved[i][key])
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
            raise RunError(f"the resume state does not fit the run's config ({str(e).splitlines()[0]})") from None
        self.steps[k] = steps


def _template_state(model: nn.Module, config: Config, steps_per_epoch: int) -> tuple[dict, dict]:
    """The state dicts a single run's optimizer and schedule have before their first step."""
    optimizer = make_optimizer(model.parameters(), config.optimizer, config.lr, config.momentum,
                               config.nesterov, config.weight_decay)
    schedule = make_schedule(optimizer, config.schedule, config.warmup, config.epochs * steps_per_epoch)
    return optimizer.state_dict(), schedule.state_dict() if schedule is not None else {}


def _schedule_factor(config: Config, total_steps: int) -> Callable[[int], float] | None:
    """training.make_schedule's factor per step (None for a constant rate): the very same function."""
    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = make_schedule(dummy, config.schedule, config.warmup, total_steps)
    return None if schedule is None else schedule.lr_lambdas[0]


# ---------------------------------------------------------------------------
# The group: what the engine's loop drives

@dataclass
class Group:
    """Members trained together: the stack, the shared batches and batch order, and how far each has got."""

    configs: list[Config]
    stack: Stack
    batches: Batches
    generator: torch.Generator
    architecture: dict[str, Any]
    _lr: torch.Tensor | None = None  # this epoch's rate per step and member, (steps, K)

    @property
    def members(self) -> int:
        return self.stack.k

    # -- the step: training.Trainee's, for K networks at once -------------------

    def train(self) -> None:
        self.stack.train()

    def zero_grad(self) -> None:
        self.stack.zero_grad()

    def loss(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Each member's loss on the same batch, shape (K,)."""
        return self.stack.loss(xb, yb)

    def backward(self, losses: torch.Tensor) -> None:
        self.stack.backward(losses)  # member k's parameters get the gradient of member k's loss

    def step(self, losses: torch.Tensor, i: int) -> None:
        self.stack.step(losses, self._lr[i])

    # -- around the epoch ---------------------------------------------------------

    def begin_epoch(self, epoch: int, training: list[bool]) -> None:
        """`training[k]`: whether member k trains this epoch; the others (ahead of the group after an
        interruption, diverged, or done) wait, frozen."""
        self.stack.begin_epoch(training)
        self._lr = self.stack.lr_table(epoch)

    def reduce(self, mean_loss: torch.Tensor) -> torch.Tensor:
        return mean_loss

    def accuracies(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], float | None]:
        return self.stack.accuracy(x, y)

    def steps(self, k: int) -> int:
        """Optimiser steps member k has taken: its epochs done times the steps of an epoch."""
        return int(self.stack.steps[k])

    def lr(self, k: int) -> float:
        return self.stack.lr_after(k, self.steps(k))

    # -- members in and out, as single runs -------------------------------------

    def restore(self, k: int, state: dict[str, Any] | None, epochs_done: int) -> None:
        """Member k from its last commit (None: as initialised, epoch 0)."""
        if state is not None:
            self.stack.load_member(k, state, epochs_done * len(self.batches))

    def restore_order(self, state: dict[str, Any]) -> None:
        """The shared batch order (and torch's RNG) as a member's commit left it."""
        set_rng_state(state["rng"], self.generator)

    def member_state(self, k: int) -> dict[str, Any]:
        """What a single run of member k would commit now (training.Trainee.state)."""
        return {**self.stack.member_training_state(k, self.steps(k)), "rng": rng_state(self.generator)}


def build_group(configs: list[Config], splits: Splits, device: torch.device) -> Group:
    """The members initialised from their seeds, the shared batches and the generator of the shared order."""
    c = configs[0]
    arch = architecture(c.model, tuple(splits.x.shape[1:]), len(splits.dataset.classes), c.hidden,
                        c.activation, c.output)
    batches = Batches(splits.x, splits.y, c.batch_size, c.shift, c.drop_last)
    if len(batches) == 0:
        raise RunError(f"--batch-size {c.batch_size} with drop_last leaves no batch ({len(splits.y)} training examples)")
    stack = Stack(configs, arch, device, len(batches))
    generator = torch.Generator(device=device).manual_seed(c.order_seed())
    return Group(configs, stack, batches, generator, arch)


# ---------------------------------------------------------------------------
# An ensemble: K members trained batched into one run, saved as one checkpoint

def ensemble_members(config: Config) -> list[Config]:
    """The members of `train --ensemble K`: seeds seed .. seed+K-1, all in the order of the first."""
    return [config.replace(seed=config.seed + k, ensemble=1, data_seed=config.order_seed())
            for k in range(config.ensemble)]


def ensemble_state(group: Group) -> dict[str, Any]:
    """The run's commit: member k's tensors under `members.<k>.` (as models.Ensemble's state dict), and
    each member's optimizer and schedule state as a single run keeps them."""
    states = [group.member_state(k) for k in range(group.stack.k)]
    model = {f"members.{k}.{name}": t for k, s in enumerate(states) for name, t in s["model"].items()}
    return {"model": model, "optimizer": {"members": [s["optimizer"] for s in states]},
            "schedule": {"members": [s["schedule"] for s in states]}, "rng": states[0]["rng"]}


def restore_ensemble(group: Group, state: dict[str, Any], epochs_done: int) -> None:
    try:
        optimizers = state["optimizer"]["members"]
        if len(optimizers) != group.stack.k:
            raise ValueError(f"{len(optimizers)} members saved, {group.stack.k} planned")
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"the resume state does not fit the run's config ({e})") from None
    for k in range(group.stack.k):
        prefix = f"members.{k}."
        model = {name[len(prefix):]: t for name, t in state["model"].items() if name.startswith(prefix)}
        group.restore(k, {"model": model, "optimizer": optimizers[k]}, epochs_done)
    group.restore_order(state)
