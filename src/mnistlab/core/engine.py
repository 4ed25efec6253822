"""The engine: one run lifecycle and one training loop, whatever trains.

Every run goes through the same steps, in `_train`:

    open the run directory: create it, or open it to resume (locked)     runs.create / runs.open_run
    load the data onto the device, held to what the run was trained on   training.load_splits
    build the trainee: one network, K networks at once (an ensemble, a sweep's group),
        or one network across the processes of a torchrun job
    put the last commit back into it, or commit epoch 0
    fit: epoch after epoch, the notebook's loop over the trainee's step (train_epoch),
        evaluation, one metrics row per member, the commit, and the events

`train` and `resume` do this for one run (an ensemble's K members are one run; under
torchrun, one network across the processes), `train_group` for a sweep's group, one run
per member. What happens is said as events (core/events.py): into each run's
events.jsonl, to the caller's `on_event`, and as lines to `log`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .. import __version__
from ..base.config import Config
from ..base.devices import describe, flush_denormals, select_device, synchronize
from ..base.errors import Interrupted, MnistlabError, RunError, UsageError
from ..base.threads import using_threads
from ..base.models import Ensemble, build_model, step_flops
from . import distributed, runs
from . import tensorboard as tensorboard_mod
from .batched import Group, build_group, ensemble_members, ensemble_state, restore_ensemble
from .evaluation import predictions
from .events import LANGUAGES, PROGRESS_SECONDS, Emit, epoch_line, event, lines
from .runs import Run
from .training import Splits, Trainee, build, capture_forward_loss, checkpoint_meta, load_splits

Log = Callable[[str], None]


@dataclass
class RunResult:
    run_dir: Path
    summary: dict[str, Any]
    model: nn.Module
    rows: list[dict[str, Any]]


# ---------------------------------------------------------------------------
# The loop

def train_epoch(trainee: Trainee | Group, on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """One pass over the data in shuffled batches: the notebook's loop. Returns each member's mean batch
    loss, shape (members,), summed on the device (no host sync per step)."""
    trainee.train()
    total = torch.zeros(trainee.members, device=trainee.batches.y.device)
    for i, (xb, yb) in enumerate(trainee.batches.epoch(trainee.generator)):
        trainee.zero_grad()
        loss = trainee.loss(xb, yb)
        trainee.backward(loss)
        trainee.step(loss, i)
        total += loss.detach()
        if on_step is not None:
            on_step(i, total)
    return total / len(trainee.batches)


def timed_epoch(trainee: Trainee | Group, device: torch.device,
                on_step: Callable[[int, torch.Tensor], None] | None = None) -> tuple[list[float], float]:
    """`train_epoch` with an honest clock: the device's queue drained before, the losses read back (the one
    host sync of the epoch) before the clock stops, denormal floats flushed on the CPU."""
    synchronize(device)
    start = time.perf_counter()
    with flush_denormals(device):
        losses = trainee.reduce(train_epoch(trainee, on_step)).tolist()
    return losses, time.perf_counter() - start


class Events:
    """Where events go: the run's events.jsonl, the caller's `on_event`, and their lines to `log`."""

    def __init__(self, on_event: Emit | None = None, log: Log | None = None, heard: bool = True, lang: str = "en"):
        self.on_event, self.log, self.lang = on_event, log, lang
        self.heard = heard  # False on the other ranks of a torchrun job: rank 0 speaks for all

    def __call__(self, run: Run, kind: str, **fields: Any) -> None:
        e = event(kind, run.path, **fields)
        run.emit(e)
        if not self.heard:
            return
        if self.on_event is not None:
            self.on_event(e)
        if self.log is not None:
            for text in lines(e, self.lang):
                self.log(text)


class Members:
    """Where each member's epochs go, and what is said of them.

    One run per member (one network; a sweep's group), or one run for all (an ensemble, whose epoch row
    is the members' mean loss and the accuracy of their averaged probabilities).
    """

    def __init__(self, trainee: Trainee | Group, runs_: list[Run], metas: list[dict[str, Any]], device: torch.device,
                 events: Events, world_size: int = 1, ensemble: bool = False, group_log: Log | None = None):
        self.trainee, self.runs, self.metas, self.device = trainee, runs_, metas, device
        self.events, self.world_size, self.ensemble = events, world_size, ensemble
        # A sweep's group: its members' epochs are said in one line each epoch, and a member that diverges
        # stops alone; otherwise (one network, an ensemble) a divergence ends the run.
        self.group_log = group_log
        self.hinted: set[int] = set()

    def run_of(self, k: int) -> Run:
        return self.runs[0] if self.ensemble else self.runs[k]

    def done(self, k: int) -> int:
        return self.run_of(k).epoch

    def over(self, k: int) -> bool:
        """Diverged, or stopped at its target: trains no more."""
        run = self.run_of(k)
        return bool(run.state and run.state.get("diverged")) or (
            bool(run.config.target_accuracy) and runs.status(run.config, run.state) == "finished")

    def progress(self, epoch: int, step: int, steps: int, losses: list[float], rate: float) -> None:
        if self.ensemble:
            losses = [sum(losses) / len(losses)]
        for run, loss in zip(self.runs, losses):
            self.events(run, "progress", epoch=epoch, epochs=run.config.epochs, step=step, steps=steps, loss=loss,
                        steps_per_second=rate)

    def commit(self, epoch: int, rows: list[dict[str, Any] | None], together: dict[str, float | None]) -> None:
        if self.ensemble:
            trained = [r for r in rows if r is not None]
            row = {"epoch": epoch, "train_loss": sum(r["train_loss"] for r in trained) / len(trained), **together,
                   "lr": trained[0]["lr"], "seconds": trained[0]["seconds"]}
            self._commit(self.runs[0], 0, epoch, row, ensemble_state(self.trainee))
            return
        for k, row in enumerate(rows):
            if row is not None:
                self._commit(self.runs[k], k, epoch, row, self.trainee.member_state(k))
        if self.group_log is not None:
            done = [r for r in rows if r is not None]
            self.group_log(group_line(done, self.runs[0].config.epochs, len(rows) - len(done)))

    def _commit(self, run: Run, k: int, epoch: int, row: dict[str, Any], state: dict[str, Any]) -> None:
        run.commit(epoch, [*run.rows, row], state, self.metas[k], str(self.device), self.world_size)
        self.events(run, "epoch", epochs=run.config.epochs, row=row)
        hint = runs.learning_hint(run.rows, len(self.metas[k]["classes"]), run.config.lr,
                                  self.metas[k]["steps_per_epoch"], run.config.batch_size)
        if hint and k not in self.hinted:
            self.hinted.add(k)
            self.events(run, "hint", epoch=epoch, message=hint)
            if self.group_log is not None:
                self.group_log(f"{run.path.name}: {hint}")

    def diverged(self, k: int, epoch: int, loss: float) -> None:
        """Member k's loss stopped being finite in `epoch`: recorded in its run, which keeps what it committed."""
        run = self.run_of(k)
        lr = self.trainee.configs[k].lr if isinstance(self.trainee, Group) else run.config.lr
        if self.ensemble:
            message = (f"epoch {epoch}: member {k} (seed {run.config.seed + k}) diverged (its loss is not "
                       f"finite); lower --lr (now {lr}). {run.kept().capitalize()}")
        elif run.epoch:
            message = (f"epoch {epoch}: the training loss is {loss}; the run diverged, so lower --lr (now {lr}). "
                       f"{runs.epochs_text(run.epoch).capitalize()} kept in {run.path}")
        else:
            message = (f"epoch {epoch}: the training loss is {loss}; the run diverged, so lower --lr (now {lr}). "
                       f"Nothing was kept; start again with: mnistlab train --out {run.path} --lr {lr / 10:g} ...")
        run.mark_diverged(message)
        self.events(run, "ended", status="diverged", epochs=run.epoch, message=message)
        if self.group_log is None:
            raise RunError(message)
        self.group_log(f"{run.path.name} diverged in epoch {epoch} (loss not finite); {run.epoch} epochs kept, "
                       "the others go on")


def _evaluate(trainee: Trainee | Group, x: torch.Tensor | None, y: torch.Tensor | None
              ) -> tuple[list[float] | None, float | None]:
    return trainee.accuracies(x, y) if x is not None else (None, None)


def fit(trainee: Trainee | Group, splits: Splits, members: Members, last: int, device: torch.device) -> None:
    """Train every member that is not over (diverged, at its target) up to epoch `last`, committing each epoch.

    A member ahead of the others (committed before an interruption) waits, frozen, until they catch up.
    """
    config = members.run_of(0).config
    target = config.target_accuracy
    while True:
        waiting = [k for k in range(trainee.members) if members.done(k) < last and not members.over(k)]
        if not waiting:
            return
        epoch = min(members.done(k) for k in waiting) + 1
        training = [k in waiting and members.done(k) == epoch - 1 for k in range(trainee.members)]
        trainee.begin_epoch(epoch, training)
        losses, seconds = timed_epoch(trainee, device, _progress(members, epoch, len(trainee.batches)))
        trained = [training[k] and math.isfinite(losses[k]) for k in range(trainee.members)]
        for k in range(trainee.members):
            if training[k] and not trained[k]:
                members.diverged(k, epoch, losses[k])
        val, val_together = _evaluate(trainee, splits.x_val, splits.y_val)
        # With a target, the test accuracy is the measure when there is no validation split, and is wanted
        # at the epoch a member stops at.
        at_target = bool(target) and (val is None or any(trained[k] and val[k] >= target for k in range(len(val))))
        if config.eval_every_epoch or epoch == config.epochs or at_target:
            test, test_together = _evaluate(trainee, splits.x_test, splits.y_test)
        else:
            test, test_together = None, None
        rows: list[dict[str, Any] | None] = []
        for k in range(trainee.members):
            rows.append({"epoch": epoch, "train_loss": losses[k], "val_accuracy": val[k] if val else None,
                         "test_accuracy": test[k] if test else None, "lr": trainee.lr(k), "seconds": seconds}
                        if trained[k] else None)
        if any(rows):
            members.commit(epoch, rows, {"val_accuracy": val_together, "test_accuracy": test_together})


def _progress(members: Members, epoch: int, steps: int) -> Callable[[int, torch.Tensor], None]:
    """What the loop calls after each step: a progress event at most every PROGRESS_SECONDS (reading the
    running loss waits for the device, so only then)."""
    last = {"time": time.perf_counter(), "step": 0}

    def on_step(i: int, total: torch.Tensor) -> None:
        now = time.perf_counter()
        if now - last["time"] < PROGRESS_SECONDS or i + 1 == steps:
            return
        rate = (i + 1 - last["step"]) / (now - last["time"])
        last.update(time=now, step=i + 1)
        members.progress(epoch, i + 1, steps, (total / (i + 1)).tolist(), rate)

    return on_step


# ---------------------------------------------------------------------------
# The lifecycle

def _language(lang: str) -> str:
    if lang not in LANGUAGES:
        raise UsageError(f"lang must be {' or '.join(LANGUAGES)} (got {lang!r})")
    return lang


def _log(log: Log | None, verbose: bool) -> Log | None:
    if log is not None:
        return log
    return (lambda text: print(text, flush=True)) if verbose else None


def train(config: Config, *, out: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
          stop_after: int | None = None, log: Log | None = None, verbose: bool = False, on_event: Emit | None = None,
          progress: bool = False, tensorboard: bool = False, threads: int | None = None,
          lang: str = "en") -> RunResult | None:
    """Train `config` into a new run directory (`out`, default runs/<recipe>-<dataset>[-N]).

    `log` receives the lines the command prints (`verbose=True` prints them); `on_event` receives every
    event (core/events.py); `progress` shows a download's progress bar; `stop_after` ends the run after
    that epoch as if interrupted (it can be resumed); `tensorboard` writes the events for TensorBoard
    too (RUN/tensorboard/); `threads`: torch's CPU threads (default: chosen for the network's step and the
    machine, base/threads.py); `lang`: the language of the lines `log` gets, en or fr. Under torchrun, one
    network is trained across the processes and only rank 0 gets the result (the others get None).
    """
    config = config.validated()
    if tensorboard:
        tensorboard_mod.require()
    events = Events(on_event, _log(log, verbose), lang=_language(lang))
    process = distributed.launched()
    if process is not None:
        return _across_processes(process, events, config=config, out=out, data_dir=data_dir, progress=progress,
                                 tensorboard=tensorboard, threads=threads)
    device = select_device(config.device)
    with _threads(device, threads, config), runs.create(out if out is not None else runs.default_path(config),
                                                        config) as run:
        run.tensorboard = tensorboard
        return _train(run, device, events, data_dir=data_dir, stop_after=stop_after, progress=progress)


def resume(run_dir: str | os.PathLike, *, epochs: int | None = None, data_dir: str | os.PathLike | None = None,
           any_data: bool = False, stop_after: int | None = None, log: Log | None = None, verbose: bool = False,
           on_event: Emit | None = None, progress: bool = False, tensorboard: bool = False,
           threads: int | None = None, lang: str = "en") -> RunResult | None:
    """Continue the run in `run_dir` from its last committed epoch (to `epochs` in all, if given).

    The data is the run's own: the folder it was trained from unless `data_dir` says otherwise, and files
    whose content differs from what it was trained on are refused unless `any_data`. A refused resume
    changes nothing in the run. A run that wrote for TensorBoard goes on doing so.
    """
    if tensorboard:
        tensorboard_mod.require()
    events = Events(on_event, _log(log, verbose), lang=_language(lang))
    process = distributed.launched()
    if process is not None:
        return _across_processes(process, events, resume_dir=run_dir, epochs=epochs, data_dir=data_dir,
                                 any_data=any_data, progress=progress, tensorboard=tensorboard, threads=threads)
    with runs.open_run(run_dir) as run:
        run.tensorboard = _tensorboard(run, tensorboard)
        device = select_device(run.config.device)
        with _threads(device, threads, run.config):
            return _train(run, device, events, data_dir=data_dir, any_data=any_data, epochs=epochs,
                          stop_after=stop_after, progress=progress)


def _train(run: Run, device: torch.device, events: Events, data_dir: str | os.PathLike | None = None,
           any_data: bool = False, epochs: int | None = None, stop_after: int | None = None, progress: bool = False,
           process: distributed.Process | None = None) -> RunResult | None:
    """The lifecycle of one run, opened: data, trainee, restore or epoch 0, fit, result."""
    resumed, began = run.state is not None, False  # until it began, a failure changes nothing in the run
    try:
        if run.state and run.state.get("diverged"):
            raise RunError(f"{run.path} diverged ({run.state['diverged']['message']}); resuming would diverge "
                           "again: train a new run with a lower --lr")
        config = run.config if epochs is None else run.extended(epochs)
        if process is not None:
            config = config.replace(cuda_graph=False)  # a graph-captured step would bypass DDP's hooks
        data_dir = data_dir if data_dir is not None else _recorded_data_dir(run, events)
        splits = _load_data(run, config, data_dir, device, any_data, progress, process)
        if epochs is not None:
            run.set_epochs(epochs)
        if config.ensemble > 1:
            trainee: Trainee | Group = build_group(ensemble_members(config), splits, device)
        else:
            trainee = build(config, splits, device)
        meta = {**checkpoint_meta(config, trainee.architecture, splits, data_dir, len(trainee.batches)),
                **({"ensemble": config.ensemble} if config.ensemble > 1 else {})}
        if run.state is None:  # epoch 0: a run stopped in its first epoch starts again exactly as it began
            run.commit(0, [], ensemble_state(trainee) if config.ensemble > 1 else trainee.state(), meta, str(device),
                       process.world_size if process else 1)
        else:
            if config.ensemble > 1:
                restore_ensemble(trainee, run.state, run.epoch)
            else:
                trainee.restore(run.state)
            run.publish()  # files left behind by a kill are re-derived, now that the resume is accepted
        if process is not None:
            trainee = distributed.distribute(trainee, process, device)
        members = Members(trainee, [run], [meta] * trainee.members, device, events,
                          process.world_size if process else 1, ensemble=config.ensemble > 1)
        _started(run, config, splits, device, trainee, events, resumed, process)
        began = True
        if device.type == "cuda" and config.cuda_graph and isinstance(trainee, Trainee):
            trainee.forward_loss = _capture(trainee, splits, run, events)
        fit(trainee, splits, members, config.epochs if stop_after is None else min(config.epochs, stop_after), device)
        model = _model(trainee, run)  # an ensemble's is built from its members: once
        if run.tensorboard and run.writing:
            _mistakes(run, model, splits, len(trainee.batches))
    except KeyboardInterrupt:
        message = f"interrupted; {run.kept()}"
        if began:
            events(run, "ended", status="stopped", epochs=run.epoch, message="")
        raise Interrupted(f"{process}: {message}" if process else message) from None
    except MnistlabError as e:
        if began and not (run.state and run.state.get("diverged")):
            events(run, "ended", status="failed", epochs=run.epoch, message=str(e))
        if process is not None:
            e.args = (f"{process}: {e}",)  # every process may say it: each line names its rank
        raise
    except (RuntimeError, OSError) as e:
        said = distributed.failure(e, process) if process is not None else None
        if said is None:
            raise
        if began:
            events(run, "ended", status="failed", epochs=run.epoch, message=said)
        raise RunError(f"{said}; {run.kept()}") from None
    s = _ended(run, events)
    if process is not None and not process.leader:
        return None
    return RunResult(run.path, s, model, run.rows)


def _ended(run: Run, events: Events) -> dict[str, Any]:
    """The `ended` event of a run that trained as far as it was asked to; returns its summary."""
    s = runs.summary(run.config, run.state)
    status = "target" if s["time_to_target"] is not None else "finished" if s["finished"] else "stopped"
    events(run, "ended", status=status, epochs=run.epoch, message="")
    return s


def _member_model(group: Group, k: int) -> nn.Module:
    model = build_model(group.architecture).to(group.batches.y.device)
    model.load_state_dict(group.stack.member_model(k))
    return model


def _model(trainee: Trainee | Group, run: Run) -> nn.Module:
    if isinstance(trainee, Group):  # an ensemble: one module averaging its members' probabilities
        model = Ensemble([build_model(trainee.architecture) for _ in range(trainee.members)], run.config.output)
        model.load_state_dict(run.state["model"])
        return model.to(trainee.batches.y.device)
    return trainee.model.module if isinstance(trainee, distributed.DistributedTrainee) else trainee.model


def _threads(device: torch.device, requested: int | None, config: Config, members: int | None = None):
    """While a run trains on the CPU: torch's threads, `requested` or chosen for its step (base/threads.py:
    one thread for a small network's steps, whose threads would only wait for each other)."""
    if device.type != "cpu":
        return contextlib.nullcontext()
    return using_threads(requested, step_flops(config.model, config.hidden, config.batch_size,
                                               members or config.ensemble))


def _tensorboard(run: Run, asked: bool) -> bool:
    """Whether the run writes for TensorBoard: when asked, or when it did before (a resumed run goes on)."""
    wrote = (run.path / tensorboard_mod.FOLDER).is_dir()
    if wrote and not asked:
        tensorboard_mod.require()
    return asked or wrote


def _mistakes(run: Run, model: nn.Module, splits: Splits, steps_per_epoch: int) -> None:
    """The first misclassified test digits, for TensorBoard, as the run ends (at its last step)."""
    predicted = predictions(model, splits.x_test)
    wrong = (predicted != splits.y_test).nonzero().flatten()[:tensorboard_mod.MISTAKES].cpu()
    run.board().mistakes(splits.dataset.test.images[wrong], splits.y_test[wrong].tolist(),
                         predicted[wrong].tolist(), list(splits.dataset.classes), run.epoch * steps_per_epoch)


def _recorded_data_dir(run: Run, events: Events) -> str | None:
    """The folder the run was trained from, if it still exists; else None (the usual places)."""
    recorded = run.state["meta"].get("data_dir") if run.state else None
    if recorded and not Path(recorded).is_dir():
        events(run, "note", message=f"data: {recorded} (recorded in the run) is gone; looking in the usual places")
        return None
    return recorded


def _load_data(run: Run, config: Config, data_dir: str | os.PathLike | None, device: torch.device, any_data: bool,
               progress: bool, process: distributed.Process | None) -> Splits:
    """The data on the device; for a run that has trained, the very data it trained on (unless `any_data`)."""
    if process is not None and not process.leader:
        distributed.barrier()  # rank 0 fetches and caches the data first; the others then read its cache
    splits = load_splits(config, data_dir, device, progress and (process is None or process.leader), any_data)
    if process is not None:
        if process.leader:
            distributed.barrier()
        distributed.check_split(config.batch_size, len(splits.y), config.drop_last, process.world_size)
    hold_to_recorded_data(run, splits, data_dir, any_data)
    return splits


def hold_to_recorded_data(run: Run, splits: Splits, data_dir: str | os.PathLike | None, any_data: bool) -> None:
    """RunError when the data differs from what the run was trained on, naming both (unless `any_data`)."""
    recorded = run.state["meta"].get("data_fingerprint") if run.state else None
    if recorded and recorded != splits.fingerprint and not any_data:
        where = data_dir or splits.dataset.source
        raise RunError(f"{where}: these files hold other data than {run.path} was trained on (content "
                       f"fingerprint {splits.fingerprint[:12]}, the run's {recorded[:12]}); point --data-dir at the "
                       "run's data, or pass --any-data to continue on these files")


def _started(run: Run, config: Config, splits: Splits, device: torch.device, trainee: Trainee | Group,
             events: Events, resumed: bool, process: distributed.Process | None) -> None:
    world = process.world_size if process else 1
    where = describe(device) + (f" on each of {world} processes" if world > 1 else "")
    events(run, "started", config=config.to_dict(), epochs=config.epochs,
           epoch=run.epoch, steps_per_epoch=len(trainee.batches), device=where, dataset=splits.dataset.spec.name,
           data_source=splits.dataset.source, members=config.ensemble, world_size=world, resumed=resumed,
           mnistlab=__version__)
    if config.ensemble > 1:
        events(run, "note", message=f"ensemble: {config.ensemble} networks (seeds {config.seed}-"
               f"{config.seed + config.ensemble - 1}) trained at once, one batch order")


def _capture(trainee: Trainee, splits: Splits, run: Run, events: Events):
    """The forward and loss as CUDA graphs, or None (eager) when capture fails: it is an optimisation."""
    try:
        idx = torch.arange(trainee.batches.batch_size, device=splits.y.device) % len(splits.y)
        graphed = capture_forward_loss(trainee.model, trainee.loss_fn, splits.x[idx], splits.y[idx])
        events(run, "note", message="cuda graph: forward and backward captured (turn off with --no-cuda-graph)")
        return graphed
    except Exception as e:  # noqa: BLE001 - capture is an optimisation; eager always works
        events(run, "note", message=f"cuda graph: capture failed ({type(e).__name__}: {e}); training eagerly")
        return None


def _across_processes(process: distributed.Process, events: Events, config: Config | None = None,
                      out: str | os.PathLike | None = None, resume_dir: str | os.PathLike | None = None,
                      epochs: int | None = None, data_dir: str | os.PathLike | None = None, any_data: bool = False,
                      progress: bool = False, tensorboard: bool = False,
                      threads: int | None = None) -> RunResult | None:
    """One network across the processes of a torchrun job (DDP): rank 0 opens and writes the run, the others
    follow it with writing off; all train the same lifecycle on their shard of every batch."""
    if config is not None and config.ensemble > 1:
        raise UsageError("under torchrun, train trains one network across the processes; drop --ensemble "
                         "(or train ensembles with mnistlab sweep, whose processes each train their share)")
    if config is not None:
        distributed.check_split(config.batch_size, 0, True, process.world_size)  # early, before any process waits
    distributed.join(distributed.backend())
    events.heard = process.leader
    failed = False
    try:
        with contextlib.ExitStack() as stack:
            run = None
            if process.leader:
                try:
                    run = stack.enter_context(runs.open_run(resume_dir) if resume_dir is not None else
                                              runs.create(out if out is not None else runs.default_path(config),
                                                          config))
                except BaseException:
                    distributed.broadcast(None)  # the others stop too
                    raise
            payload = distributed.broadcast((str(run.path), run.config.to_dict(), run.state) if run else None)
            if payload is None:
                raise RunError(f"{process}: stopped, rank 0 could not start the run")
            if run is None:
                path, config_dict, state = payload
                run = Run(Path(path), Config.from_dict(config_dict), state, writing=False)
            run.resume_command = f"torchrun ... -m mnistlab train --resume {run.path}"
            run.tensorboard = _tensorboard(run, tensorboard) if run.writing else False
            device = distributed.local_device(select_device(run.config.device), process)
            if device.type == "cuda":
                torch.cuda.set_device(device)
            stack.enter_context(_threads(device, threads, run.config))
            return _train(run, device, events, data_dir=data_dir, any_data=any_data, epochs=epochs,
                          progress=progress, process=process)
    except BaseException:
        failed = True
        raise
    finally:
        if not failed:
            distributed.leave()  # after a failure the others may be gone: leaving would wait for them


def train_group(paths: Sequence[str | os.PathLike], configs: Sequence[Config], *, device: str | None = None,
                data_dir: str | os.PathLike | None = None, any_data: bool = False, resume_command: str = "",
                local: distributed.Process | None = None, log: Log = lambda text: None, label: str = "",
                on_event: Emit | None = None, stop_after: int | None = None, tensorboard: bool = False,
                threads: int | None = None) -> None:
    """Train configurations that differ only in batched.MEMBER_FIELDS as one batched group, member k into the
    run directory paths[k] (created, or resumed from what it committed): a sweep's group.

    A member whose loss stops being finite is recorded as diverged in its run; the others go on. `log`
    gets one line per epoch for the whole group, each beginning with `label`; `on_event` every member's
    events. `local`: the torchrun process this is, for its device; `stop_after`: as for `train`.
    """
    events = Events(on_event)
    with contextlib.ExitStack() as stack:
        opened = [stack.enter_context(runs.open_run(p) if (Path(p) / runs.CONFIG).is_file() else runs.create(p, c))
                  for p, c in zip(paths, configs)]
        for run, config in zip(opened, configs):
            if run.config != config:
                raise RunError(f"{run.path}: its config.json is not the sweep's configuration for it; move it "
                               "away or start a new sweep")
            run.resume_command = resume_command
            run.tensorboard = _tensorboard(run, tensorboard)
        torch_device = select_device(device or configs[0].device)
        if local is not None:
            torch_device = distributed.local_device(torch_device, local)
        stack.enter_context(_threads(torch_device, threads, configs[0], len(configs)))
        try:
            if data_dir is None:
                data_dir = next((d for d in (_recorded_data_dir(r, events) for r in opened if r.state) if d), None)
            splits = load_splits(configs[0], data_dir, torch_device, any_data=any_data)
            for run in opened:
                hold_to_recorded_data(run, splits, data_dir, any_data)
            group = build_group(list(configs), splits, torch_device)
            metas = [checkpoint_meta(c, group.architecture, splits, data_dir, len(group.batches)) for c in configs]
            for k, run in enumerate(opened):
                group.restore(k, run.state, run.epoch)
                if run.state is None:  # epoch 0: a run stopped in its first epoch starts again as it began
                    run.commit(0, [], group.member_state(k), metas[k], str(torch_device))
                else:
                    run.publish()  # files left behind by a kill are re-derived, now that the resume is accepted
            at = min(run.epoch for run in opened)
            if at:  # the shared batch order as the members furthest behind left it
                group.restore_order(next(run for run in opened if run.epoch == at).state)
            members = Members(group, opened, metas, torch_device, events, group_log=lambda text: log(f"{label}{text}"))
            for run, config in zip(opened, configs):
                _started(run, config, splits, torch_device, group, events, run.epoch > 0, None)
            c = configs[0]
            shape = "x".join(map(str, c.hidden)) if c.model == "mlp" else c.model
            log(f"{label}{len(opened)} models ({c.model} {shape}, batch {c.batch_size}, {c.dataset}, {c.optimizer}) "
                f"on {describe(torch_device)}, from epoch {at + 1} of {c.epochs}")
            fit(group, splits, members, c.epochs if stop_after is None else min(c.epochs, stop_after), torch_device)
            for k, run in enumerate(opened):
                if run.tensorboard:
                    _mistakes(run, _member_model(group, k), splits, len(group.batches))
        except KeyboardInterrupt:
            for run in opened:
                events(run, "ended", status="stopped", epochs=run.epoch, message="")
            raise
        for run in opened:
            if not (run.state and run.state.get("diverged")):
                _ended(run, events)


def group_line(rows: list[dict[str, Any]], epochs: int, idle: int) -> str:
    """One line for a group's epoch: like events.epoch_line, with the range over the members."""
    if len(rows) == 1:
        return epoch_line(rows[0], epochs)

    def span(key: str, scale: float = 1.0, fmt: str = ".4f") -> str:
        values = [scale * r[key] for r in rows]
        return f"{min(values):{fmt}}-{max(values):{fmt}}"

    first = rows[0]
    parts = [f"epoch {first['epoch']:>{len(str(epochs))}}/{epochs}", f"{len(rows)} models",
             f"train loss {span('train_loss')}"]
    for key, name in (("val_accuracy", "val acc"), ("test_accuracy", "test acc")):
        if first.get(key) is not None:
            parts.append(f"{name} {span(key, 100, '.2f')}%")
    parts.append(f"{first['seconds']:.2f}s")
    if idle:
        parts.append(f"({idle} not training: diverged or waiting)")
    return "  ".join(parts)
