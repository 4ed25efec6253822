"""Training from the page: jobs that train in processes of their own, in a served folder of runs.

`mnistlab serve FOLDER` serves every run directory under FOLDER as it is now: the
runs are listed with their state and curves, and each run with a committed epoch
is a model (`ModelFolder` follows the folder, loading a model again when its
commit changes). A job started from the page is an ordinary command in a process
of its own, never in the server's:

    python -m mnistlab train --out NAME --no-plots [flags]          one network
    python -m mnistlab sweep --out NAME --lr a,b,... --no-plots ... learning rates compared, one batched
                                                                     group: NAME/runs/lr<a>/, ...

run in FOLDER, so that its run directories are FOLDER/NAME (the CLI can evaluate,
resume and export them) and its events' "run" field is the run's name here.
Everything a job is lives on disk, so that every server process on the folder
sees the same jobs:

    FOLDER/.jobs/<id>.json   the job: its runs and their configs, its command, the client that asked,
                             when it was queued, started and ended, its process id
    FOLDER/.jobs/<id>.log    what its process printed (the one line of a job that failed to start)
    FOLDER/.jobs/.lock       held while a server process queues, starts or stops jobs

Bounds (`Bounds`): at most `jobs` training processes at once (a process writing a
run in the folder counts, started from the page or not: their `.lock` files
name them), at most `queue` jobs waiting for one, at most `per_client` jobs
running or waiting per client address, at most `max_epochs` epochs and
`max_train_size` training images per run. A job waits in the queue until a
process ends; every server process starts waiting jobs (`tick`). Stopping a run
is SIGTERM to the process its lock names: the engine ends cleanly, and the run
stays resumable.

serve.py builds the routes from these; nothing here knows about HTTP beyond the
status a refusal stands for.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any, AsyncIterator, Callable, Generic, Iterator, Literal, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict, Field

from ..base import data, names
from ..base.config import MEASURED, RECIPES, Config, ConfigError
from ..base.errors import MnistlabError, RunError, WriteError
from ..base.files import read_json, read_regular, write_json
from ..base.system import process_alive
from ..core import runs
from ..core.checkpoint import META, STATE, WEIGHTS
from ..core.events import EVENTS, parse_line
from .sweep import PLAN, RUNS, run_name

JOBS = ".jobs"  # in the served folder: hidden, and no run directory, so `mnistlab runs` passes it over
MAX_LRS = 8  # learning rates compared in one batched group
REFRESH = 1.0  # seconds: the folder is looked at again at most this often per process
POLL = 0.25  # seconds between two looks at a followed events.jsonl (progress events come every 0.25 s)
KEEP_ALIVE = 15.0  # seconds: an event stream with nothing to say sends a comment this often
STOP_WAIT = 10.0  # seconds a closing server waits for its jobs to commit nothing more and end
JOB_FORMAT = 1


class Refused(Exception):
    """A request about training that cannot be done: the HTTP status it stands for and one line."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Bounds:
    """What the page may ask of this machine; the operator sets them with `mnistlab serve`'s flags."""

    jobs: int = 1  # training processes at once (0: no training from the page)
    queue: int = 8  # jobs waiting for a free process at most
    per_client: int = 2  # jobs running or waiting per client address
    max_epochs: int = 20  # epochs per run
    max_train_size: int = 0  # training images per run (0: no cap)
    tensorboard: bool = False  # the page's runs write for TensorBoard too (serve --tensorboard)


# ---------------------------------------------------------------------------
# The documents (they make the OpenAPI description)

Recipe = Literal[tuple(RECIPES)]  # type: ignore[valid-type]


class TrainSettings(BaseModel):
    """What a learner chooses; every value left out is the recipe's."""

    model_config = ConfigDict(extra="forbid")
    recipe: Recipe = Field("seed", description="the preset the values start from (seed: the course notebook)")
    dataset: str = Field("mnist", description="one of GET /api/training's datasets")
    lr: float | None = Field(None, gt=0, allow_inf_nan=False, description="the learning rate")
    lrs: list[Annotated[float, Field(gt=0, allow_inf_nan=False)]] | None = Field(
        None, min_length=2, max_length=MAX_LRS,
        description=f"2 to {MAX_LRS} learning rates to compare: trained at once as one batched group, one run each "
        "(instead of lr)")
    batch_size: int | None = Field(None, ge=1, le=1_000_000, description="images per training step")
    epochs: int | None = Field(None, ge=1, le=1_000_000, description="passes over the training images")
    hidden: list[int] | None = Field(None, min_length=1, max_length=16,
                                     description="the MLP's hidden layer sizes, e.g. [128, 64]")
    optimizer: Literal["sgd", "adamw"] | None = None
    shift: int | None = Field(None, ge=0, le=8, description="random shifts of the training images, in pixels "
                              "(0: off)")
    train_size: int | None = Field(None, ge=0, le=10_000_000, description="train on the first N training images "
                                   "(0: all)")
    val_size: int | None = Field(None, ge=0, le=10_000_000, description="training images held out to measure "
                                 "validation accuracy each epoch (0: none)")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="seed of the initial weights and batch order")


class Row(BaseModel):
    epoch: int
    train_loss: float
    val_accuracy: float | None
    test_accuracy: float | None
    lr: float
    seconds: float


class RunOut(BaseModel):
    name: str = Field(description="the run's folder under the served folder; its model's name in /api/models")
    state: str = Field(description="queued (waiting for a free process), starting, running, finished, resumable "
                       "(stopped before its last epoch: `mnistlab train --resume` continues it), diverged, damaged, "
                       "or failed (its job ended before the run began: see problem)")
    recipe: str
    dataset: str
    epochs: int = Field(description="epochs committed")
    total_epochs: int = Field(description="epochs planned")
    test_accuracy: float | None = Field(description="at the last committed epoch (0..1), as `mnistlab runs` says")
    val_accuracy: float | None
    train_seconds: float
    config: dict[str, Any] | None = Field(description="the run's configuration (config.json; planned, while queued)")
    rows: list[Row] = Field(description="one per committed epoch, as metrics.csv")
    problem: str | None = Field(None, description="what went wrong, or the learning hint")
    model: str | None = Field(description="the model's name in /api/models once an epoch is committed")
    group: str | None = Field(description="the comparison it belongs to (runs trained together), if any")
    mine: bool = Field(description="started from the page by this client")


class RunList(BaseModel):
    runs: list[RunOut]


class Started(BaseModel):
    runs: list[str] = Field(description="the names of the runs the job trains")
    queued: int = Field(description="0: started now; else its place in the queue (1: next)")


class Stopped(BaseModel):
    runs: list[str] = Field(description="the runs stopped (a comparison stops as one) or taken off the queue")
    message: str


class Limits(BaseModel):
    jobs: int = Field(description="training processes at once")
    queue: int = Field(description="jobs that may wait for a free process")
    per_client: int = Field(description="jobs running or waiting per client")
    max_epochs: int
    max_train_size: int = Field(description="training images per run at most (0: no cap)")
    max_lrs: int = Field(description="learning rates compared at once at most")
    tensorboard: bool = Field(False, description="whether the runs also write for TensorBoard (RUN/tensorboard/)")


class RecipeOut(BaseModel):
    summary: str
    config: dict[str, Any]


class Training(BaseModel):
    folder: str | None = Field(description="the served folder's name (null: the server serves the models it was "
                               "given, and trains none)")
    enabled: bool
    reason: str | None = Field(description="why training from the page is off, when it is")
    recipes: dict[str, RecipeOut]
    datasets: list[str] = Field(description="the datasets this server can train on")
    limits: Limits
    running: int = Field(description="training processes writing runs in the folder now")
    queued: int
    yours: int = Field(description="this client's jobs running or waiting")


# ---------------------------------------------------------------------------
# A job on disk

@dataclass
class Job:
    id: str
    kind: str  # train or sweep
    out: str  # the folder its command writes, under the served folder
    runs: list[str]  # the run names it trains
    configs: dict[str, dict[str, Any]]  # run name -> its config, as planned
    argv: list[str]  # after `python -m mnistlab`
    client: str
    created: float
    started: float | None = None
    pid: int | None = None
    ended: float | None = None
    exit: int | None = None  # known to the server process that started it
    stopping: bool = False  # a stop was asked for

    @property
    def waiting(self) -> bool:
        return self.started is None

    @property
    def active(self) -> bool:
        """Queued or training."""
        return self.ended is None


def _read_job(path: Path) -> Job | None:
    try:
        d = read_json(path)
        if d.pop("format") != JOB_FORMAT:
            return None
        return Job(**d)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None  # being written (never: writes are atomic), or not ours


def _is_mnistlab(pid: int) -> bool:
    """Whether process `pid` runs mnistlab (a pid named by an old lock may now be another program's)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"mnistlab" in f.read()
    except OSError:
        return process_alive(pid)  # no /proc: trust the lock, which is held


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold the lock file `path` (blocking): one server process at a time changes the jobs."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
        yield
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------------
# Settings -> configs and the command line

def configs_of(settings: TrainSettings, bounds: Bounds, datasets: list[str]) -> list[Config]:
    """The run configs a request asks for (one, or one per learning rate), checked against Config and the
    bounds; Refused(422) with one line otherwise."""
    if settings.lr is not None and settings.lrs is not None:
        raise Refused(422, "give lr (one run) or lrs (a comparison), not both")
    if settings.dataset not in datasets:
        shown = settings.dataset if settings.dataset.isprintable() and len(settings.dataset) < 80 else "given"
        raise Refused(422, f"dataset {shown!r} is not one this server can train on; choose one of "
                      f"{', '.join(datasets) or '(none found: see mnistlab datasets)'}")
    overrides = {k: v for k, v in settings.model_dump(exclude={"recipe", "lrs"}).items() if v is not None}
    if "hidden" in overrides:
        overrides["hidden"] = tuple(overrides["hidden"])
    lrs = settings.lrs or [overrides.pop("lr", RECIPES[settings.recipe].lr)]
    overrides.pop("lr", None)
    if len(set(lrs)) != len(lrs):
        raise Refused(422, "lrs: a learning rate is listed twice; list each once")
    try:
        configs = [RECIPES[settings.recipe].replace(**overrides, lr=float(lr)) for lr in lrs]
    except ConfigError as e:
        raise Refused(422, str(e)) from None
    config = configs[0]
    if config.epochs > bounds.max_epochs:
        raise Refused(422, f"epochs {config.epochs}: this server trains at most {bounds.max_epochs} epochs a run "
                      "(its operator's --max-epochs)")
    if bounds.max_train_size and not 0 < config.train_size <= bounds.max_train_size:
        asked = f"train_size {config.train_size}" if config.train_size else "all the training images (train_size 0)"
        raise Refused(422, f"{asked}: this server trains on at most {bounds.max_train_size} images a run (its "
                      f"operator's --max-train-size); set train_size to {bounds.max_train_size} or fewer")
    return configs


def _flags(config: Config, recipe: Config, sweep: bool) -> list[str]:
    """The flags that make `recipe` into `config` (`train`'s form, or `sweep`'s one-value lists)."""
    out = []
    for key, value in config.differences(recipe).items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out += [flag, str(value).lower()] if sweep else [flag if value else f"--no-{key.replace('_', '-')}"]
        elif isinstance(value, (list, tuple)):
            out += [flag, "x".join(map(str, value))] if sweep else [flag, *map(str, value)]
        else:
            out += [flag, repr(value) if isinstance(value, float) else str(value)]
    return out


def command(configs: list[Config], out: str, data_dir: Path | None, tensorboard: bool = False) -> list[str]:
    """The arguments after `python -m mnistlab` that train `configs` into `out`, with one torch thread (one
    training process per core is then what the machine holds)."""
    recipe = RECIPES[configs[0].recipe]
    where = (["--threads", "1"] + (["--data-dir", str(data_dir)] if data_dir is not None else [])
             + (["--tensorboard"] if tensorboard else []))
    if len(configs) == 1:
        return ["train", "--out", out, "--no-plots", "--recipe", recipe.recipe, *where,
                *_flags(configs[0], recipe, sweep=False)]
    # The values every member shares, as one-value lists; the sweep's own default validation split is not
    # taken: each member is then exactly the single run of its settings.
    shared = _flags(configs[0].replace(lr=recipe.lr), recipe, sweep=True)
    if configs[0].val_size == recipe.val_size:
        shared += ["--val-size", str(recipe.val_size)]
    return ["sweep", "--out", out, "--no-plots", "--recipe", recipe.recipe, *where,
            "--lr", ",".join(repr(c.lr) for c in configs), *shared]


def member_name(config: Config) -> str:
    """A comparison member's run name, as the sweep names it (`lr0.003`)."""
    return run_name(config, ["lr"], with_seed=False)


# ---------------------------------------------------------------------------
# The runs of the folder, as the API lists them

def run_name_of(folder: Path, run_dir: Path) -> str:
    return run_dir.relative_to(folder).as_posix()


def _key(path: Path, *files: str) -> tuple:
    """What changes when any of `files` in `path` is replaced (every write is a rename: a new inode)."""
    out = []
    for name in files:
        try:
            s = os.stat(path / name)
            out.append((s.st_ino, s.st_mtime_ns, s.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _group(folder: Path, run_dir: Path) -> str | None:
    """The comparison (sweep folder) a run belongs to: FOLDER/<group>/runs/<run>."""
    parent = run_dir.parent
    if parent.name == RUNS and (parent.parent / PLAN).is_file() and parent.parent != folder:
        return run_name_of(folder, parent.parent)
    return None


@dataclass
class _Listed:
    key: tuple
    run: RunOut


def describe_run(folder: Path, run_dir: Path) -> RunOut:
    """A run directory as the API shows it: `runs.info` (what `mnistlab runs` says) and its committed rows."""
    found = runs.info(run_dir)
    try:
        rows = runs.committed_rows(run_dir) if found.state != "damaged" else []
    except RunError:
        rows = []
    try:
        config = read_json(run_dir / runs.CONFIG)
        config = config if isinstance(config, dict) else None
    except (OSError, ValueError):
        config = None
    last = rows[-1] if rows else {}
    name = run_name_of(folder, run_dir)
    has_model = bool(found.epochs) or bool(found.usable)
    return RunOut(name=name, state=found.state, recipe=found.recipe, dataset=found.dataset, epochs=found.epochs,
                  total_epochs=found.total_epochs, test_accuracy=found.test_accuracy,
                  val_accuracy=last.get("val_accuracy"), train_seconds=found.train_seconds, config=config,
                  rows=[Row(**r) for r in rows], problem=found.problem or None, model=name if has_model else None,
                  group=_group(folder, run_dir), mine=False)


# ---------------------------------------------------------------------------
# The jobs

class Jobs:
    """The training jobs of one served folder, as one server process sees and changes them."""

    def __init__(self, folder: str | os.PathLike, bounds: Bounds, data_dir: str | os.PathLike | None = None):
        self.folder = Path(folder).resolve()
        self.bounds = bounds
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.dir = self.folder / JOBS
        self._children: dict[str, subprocess.Popen] = {}  # the jobs this process started
        self._listed: dict[Path, _Listed] = {}
        self._listed_lock = threading.Lock()  # listing runs in worker threads
        self._datasets: tuple[float, list[str]] | None = None
        self._jobs_read: tuple[float, list[Job]] = (-math.inf, [])

    # -- what the server can train on

    def datasets(self) -> list[str]:
        """The datasets found where training looks (`--data-dir`, else the usual places); looked for again
        after a minute, so that a dataset put in place meanwhile appears."""
        now = time.monotonic()
        if self._datasets is None or now - self._datasets[0] > 60:
            try:
                rows = data.describe(self.data_dir)
            except MnistlabError:
                rows = []
            self._datasets = (now, [r["name"] for r in rows if r["found"]])
        return self._datasets[1]

    @staticmethod
    def off(reason: str) -> Training:
        """GET /api/training's answer where nothing can be trained (no folder served)."""
        return Training(folder=None, enabled=False, reason=reason, recipes={}, datasets=[],
                        limits=Limits(**asdict(Bounds(jobs=0, queue=0, per_client=0)), max_lrs=MAX_LRS), running=0,
                        queued=0, yours=0)

    def disabled(self) -> str | None:
        if self.bounds.jobs < 1:
            return "training from the page is off on this server (it was started with --train-jobs 0)"
        return None

    def training(self, client: str) -> Training:
        jobs = self._jobs()
        return Training(
            folder=self.folder.name, enabled=self.disabled() is None, reason=self.disabled(),
            recipes={name: RecipeOut(summary=MEASURED[name]["summary"], config=c.to_dict()) for name, c in RECIPES.items()},
            datasets=self.datasets(), limits=Limits(**asdict(self.bounds), max_lrs=MAX_LRS),
            running=len(self._training_pids(jobs)), queued=sum(j.waiting for j in jobs),
            yours=sum(j.active and j.client == client for j in jobs))

    # -- starting

    def submit(self, settings: TrainSettings, client: str) -> Started:
        """Queue the job a request asks for, and start it at once when a process is free."""
        reason = self.disabled()
        if reason:
            raise Refused(403, reason)
        configs = configs_of(settings, self.bounds, self.datasets())
        with self._exclusive():
            jobs = self._settle(self._jobs())
            yours = [j for j in jobs if j.active and j.client == client]
            if len(yours) >= self.bounds.per_client:
                raise Refused(429, f"you have {len(yours)} training job{'s' if len(yours) > 1 else ''} running or "
                              f"waiting, the most one client may have here ({self.bounds.per_client}); wait for one "
                              "to end, or stop one")
            waiting = [j for j in jobs if j.waiting]
            busy = self._training_pids(jobs)
            if len(busy) >= self.bounds.jobs and len(waiting) >= self.bounds.queue:
                raise Refused(503, f"all {self.bounds.jobs} training process{'es are' if self.bounds.jobs > 1 else ' is'} "
                              f"busy and {len(waiting)} job{'s are' if len(waiting) != 1 else ' is'} waiting, the most "
                              "this server queues; try again when a run ends")
            job = self._new_job(configs, client)
            self._write(job)
            self._start_waiting([*jobs, job])
            position = 0 if job.started else sum(j.waiting for j in jobs) + 1
        return Started(runs=job.runs, queued=position)

    def _new_job(self, configs: list[Config], client: str) -> Job:
        config = configs[0]
        base = f"{config.recipe}-{names.short(config.dataset)}" + ("-lrs" if len(configs) > 1 else "")
        out = self._reserve(base)
        if len(configs) == 1:
            members = {out: config}
        else:
            members = {f"{out}/{RUNS}/{member_name(c)}": c for c in configs}
        return Job(id=f"{time.time_ns():x}-{secrets.token_hex(3)}", kind="train" if len(configs) == 1 else "sweep",
                   out=out, runs=list(members), configs={n: c.to_dict() for n, c in members.items()},
                   argv=command(configs, out, self.data_dir, self.bounds.tensorboard), client=client,
                   created=time.time())

    def _reserve(self, base: str) -> str:
        """A new folder for a job's runs, `base`, `base-2`, ...: made here, so no other job takes its name."""
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-.") or "run"
        for k in range(1, 10_000):
            name = base if k == 1 else f"{base}-{k}"
            try:
                (self.folder / name).mkdir()
                return name
            except FileExistsError:
                continue
            except OSError as e:
                raise Refused(507, f"cannot make a run folder in {self.folder.name}/ ({e.strerror or e}); "
                              "the server's disk or folder needs its operator") from None
        raise Refused(507, f"{self.folder.name}/ holds 10,000 runs named {base}; its operator should tidy it")

    def _start_waiting(self, jobs: list[Job]) -> None:
        """Start waiting jobs, oldest first, while processes are free (the caller holds the jobs' lock)."""
        busy = self._training_pids(jobs)
        for job in sorted((j for j in jobs if j.waiting), key=lambda j: (j.created, j.id)):
            if len(busy) >= self.bounds.jobs:
                return
            self._launch(job)
            busy.add(job.pid)

    def _launch(self, job: Job) -> None:
        # One thread for numpy's and SciPy's BLAS too, as for torch (--threads 1). The job runs in the folder:
        # a relative PYTHONPATH (the server's own mnistlab, e.g. PYTHONPATH=src) is made absolute.
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
        if env.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p) for p in env["PYTHONPATH"].split(os.pathsep) if p)
        try:
            with open(self.dir / f"{job.id}.log", "ab") as log:
                # A session of its own: a Ctrl-C meant for the server reaches the jobs through it (`close`),
                # which stops them cleanly; a server killed outright leaves them training, as `runs` shows.
                process = subprocess.Popen([sys.executable, "-m", "mnistlab", *job.argv], cwd=self.folder,
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                           start_new_session=True)
        except OSError as e:
            job.started = job.ended = time.time()
            self._write(job)
            self._log(job, f"mnistlab: error: the training process could not start ({e.strerror or e})")
            return
        self._children[job.id] = process
        job.started, job.pid = time.time(), process.pid
        self._write(job)

    def _log(self, job: Job, line: str) -> None:
        with contextlib.suppress(OSError), open(self.dir / f"{job.id}.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def tick(self) -> None:
        """Record the jobs that ended and start waiting ones where processes are free. Every server process
        calls this about once a second (an idle folder costs it a look at the job files)."""
        if not self._children and not any(j.active for j in self._jobs()):
            return
        with self._exclusive():
            self._start_waiting(self._settle(self._jobs()))

    def _settle(self, jobs: list[Job]) -> list[Job]:
        """Record in their files the jobs whose processes are gone (this process's own children reaped)."""
        for job in jobs:
            if job.started is None or job.ended is not None:
                continue
            child = self._children.get(job.id)
            if child is not None and child.poll() is not None:
                job.exit = child.returncode
                del self._children[job.id]
            elif child is not None or process_alive(job.pid):
                continue
            job.ended = time.time()
            self._write(job)
        return jobs

    # -- stopping

    def stop(self, name: str, client: str, operator: bool) -> Stopped:
        """Stop the run `name` (its whole job: a comparison stops as one), take it off the queue, or dismiss
        a job that failed before its runs began.

        Clients may stop the runs they started; the server's own machine (`operator`) may stop any."""
        with self._exclusive():
            jobs = self._settle(self._jobs())
            job = next((j for j in jobs if name in j.runs), None)
            run_dir = self._run_dir(name)
            if run_dir is None and job is None:
                raise Refused(404, self._unknown(name))
            # A held lock names a live process (the lock goes with it); a job's own process id, before it holds
            # its run, is checked to be mnistlab's still.
            pid = runs.lock_holder(run_dir) if run_dir is not None and runs.is_running(run_dir) else None
            if pid is None and job is not None and job.active and process_alive(job.pid) and _is_mnistlab(job.pid):
                pid = job.pid  # started, not yet writing its run
            failed = job is not None and not job.active and not any(self._run_dir(n) for n in job.runs)
            if not (job is not None and job.waiting) and not failed and pid is None:
                state = runs.info(run_dir).state if run_dir is not None else "ended"
                why = ("it is written on another machine" if run_dir is not None and runs.is_running(run_dir)
                       else f"it is {state}")
                raise Refused(409, f"run {name} is not running here ({why}); nothing to stop")
            if not operator and (job is None or job.client != client):
                raise Refused(403, f"run {name} was not started by you; only its owner, or the server's own machine, "
                              "can stop it")
            if job is not None and (job.waiting or failed):
                self._forget(job)
                what = "taken off the queue" if job.waiting else "removed"
                return Stopped(runs=job.runs, message=f"{what}: {', '.join(job.runs)}")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if job is not None:
                job.stopping = True
                self._write(job)
            stopped = job.runs if job is not None and job.pid == pid else [name]
        again = (f"mnistlab sweep --resume {self.folder.name}/{job.out}" if job is not None and job.kind == "sweep"
                 else f"mnistlab train --resume {self.folder.name}/{name}")
        return Stopped(runs=stopped, message=f"stopping {', '.join(stopped)}: what is committed is kept; continue "
                       f"with: {again}")

    def _unreserve(self, job: Job) -> None:
        """Remove the folder made for a job that never started (if it is still empty)."""
        with contextlib.suppress(OSError):
            (self.folder / job.out).rmdir()

    def _forget(self, job: Job) -> None:
        self._unreserve(job)
        for suffix in (".json", ".log"):
            with contextlib.suppress(OSError):
                (self.dir / f"{job.id}{suffix}").unlink()

    def close(self) -> None:
        """The server is stopping: stop the jobs this process started, and wait (a while) for them to end."""
        for process in self._children.values():
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_WAIT
        for process in self._children.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(OSError, RunError, WriteError):
            with self._exclusive():
                self._settle(self._jobs())

    # -- listing

    def list_runs(self, client: str) -> list[RunOut]:
        """Every run in the folder (`runs.run_dirs`), then the jobs' runs that have not begun; sorted by name."""
        with contextlib.suppress(Refused, OSError):
            self.tick()  # (the server's lifespan does it every second too, where it runs)
        jobs = self._jobs()
        owner = {name: j for j in jobs for name in j.runs}
        listed: dict[str, RunOut] = {}
        try:
            found = runs.run_dirs(self.folder)
        except OSError:
            found = []
        for run_dir in found:
            run = self._describe(run_dir)
            job = owner.get(run.name)
            listed[run.name] = run.model_copy(update={"mine": job is not None and job.client == client})
        for job in jobs:
            for name in job.runs:
                if name not in listed and (job.active or not job.stopping):
                    listed[name] = self._planned(job, name, client)
        return [listed[n] for n in sorted(listed)]

    def run(self, name: str, client: str) -> RunOut:
        run_dir = self._run_dir(name)
        job = next((j for j in self._jobs() if name in j.runs), None)
        if run_dir is not None:
            return self._describe(run_dir).model_copy(update={"mine": job is not None and job.client == client})
        if job is not None and (job.active or not job.stopping):
            return self._planned(job, name, client)
        raise Refused(404, self._unknown(name))

    def _describe(self, run_dir: Path) -> RunOut:
        """`describe_run`, looked at again only when the run's commit or config changed, or it started or
        stopped running."""
        key = (_key(run_dir, STATE, runs.CONFIG, META), runs.is_running(run_dir))
        with self._listed_lock:
            kept = self._listed.get(run_dir)
            if kept is not None and kept.key == key:
                return kept.run
        run = describe_run(self.folder, run_dir)
        with self._listed_lock:
            self._listed[run_dir] = _Listed(key, run)
        return run

    def _planned(self, job: Job, name: str, client: str) -> RunOut:
        """A job's run that has no run directory yet: waiting, starting, or failed before it began."""
        config = job.configs.get(name) or {}
        if job.waiting:
            state, problem = "queued", None
        elif job.active and process_alive(job.pid):
            state, problem = "starting", None
        else:
            state, problem = "failed", self._failure(job)
        return RunOut(name=name, state=state, recipe=config.get("recipe", ""), dataset=config.get("dataset", ""),
                      epochs=0, total_epochs=config.get("epochs", 0), test_accuracy=None, val_accuracy=None,
                      train_seconds=0.0, config=config or None, rows=[], problem=problem, model=None,
                      group=job.out if job.kind == "sweep" else None, mine=job.client == client)

    def _failure(self, job: Job) -> str:
        """The last line of a failed job's output (its `mnistlab ...: error: ...`)."""
        try:
            text = read_regular(self.dir / f"{job.id}.log", 1 << 20).decode("utf-8", "replace")
        except OSError:
            text = ""
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        errors = [line for line in lines if ": error: " in line]
        if errors:
            return errors[-1]
        if job.stopping:
            return "stopped before its run began"
        return lines[-1] if lines else f"the training process ended (exit status {job.exit}) before its run began"

    def _run_dir(self, name: str) -> Path | None:
        """The run directory called `name` here, or None: looked up among the folder's runs (a name is never
        made into a path as it is, so `..` or an absolute path finds nothing)."""
        try:
            return next((p for p in runs.run_dirs(self.folder) if run_name_of(self.folder, p) == name), None)
        except OSError:
            return None

    def _unknown(self, name: str) -> str:
        shown = name if name.isprintable() and len(name) < 200 else "given"
        return f"no run named {shown!r} in the served folder; GET /api/runs lists them"

    # -- following

    def state(self, name: str) -> str:
        """A run's state, cheaply (for the event streams): running, queued, starting, or ended."""
        run_dir = self.folder / name
        if runs.is_running(run_dir):
            return "running"
        job = next((j for j in self._jobs(max_age=POLL) if name in j.runs), None)
        if job is not None and job.waiting:
            return "queued"
        if job is not None and job.active and process_alive(job.pid) and not (run_dir / EVENTS).exists():
            return "starting"
        return "ended"

    async def events(self, names: list[str], wrap: bool, start: int = 0) -> AsyncIterator[bytes]:
        """Server-sent events: each run's events from the start (or byte `start` of a single run's
        events.jsonl), then as they are written, until every run has ended; then an `end` event with the
        runs' states. `wrap`: each message is {"name": ..., "event": ...} (several runs in one stream),
        else the event itself with the byte offset after it as its id."""
        positions = {name: _line_start(self.folder / name / EVENTS, start) for name in names}
        pending = {name: b"" for name in names}
        open_runs = set(names)
        quiet_since = time.monotonic()
        while open_runs:
            sent = False
            for name in sorted(open_runs):
                state = self.state(name)  # looked at before reading: what was written before it ended is read
                chunk = _read_from(self.folder / name / EVENTS, positions[name] + len(pending[name]))
                *complete, pending[name] = (pending[name] + chunk).split(b"\n")
                for line in complete:
                    positions[name] += len(line) + 1  # the offset after this line: its event's id
                    e = parse_line(line.decode("utf-8", "replace"))
                    if e is None:
                        continue
                    sent = True
                    if wrap:
                        yield b"data: " + json.dumps({"name": name, "event": e}).encode() + b"\n\n"
                    else:
                        yield b"id: %d\ndata: %s\n\n" % (positions[name], line.strip())
                    if e["type"] == "ended":
                        open_runs.discard(name)
                if not chunk and state == "ended":
                    open_runs.discard(name)
            if not open_runs:
                break
            now = time.monotonic()
            if sent:
                quiet_since = now
            elif now - quiet_since > KEEP_ALIVE:
                quiet_since = now
                yield b": waiting\n\n"
            await anyio.sleep(POLL)
        states = {}
        for name in names:
            with contextlib.suppress(Refused):
                states[name] = self.run(name, "").state
        yield b"event: end\ndata: " + json.dumps({"runs": states}).encode() + b"\n\n"

    # -- the job files

    def _jobs(self, max_age: float = 0.0) -> list[Job]:
        """The job files as they are now (`max_age`: or as read at most that many seconds ago)."""
        now = time.monotonic()
        if max_age and now - self._jobs_read[0] <= max_age:
            return self._jobs_read[1]
        try:
            paths = sorted(self.dir.glob("*.json"))
        except OSError:
            paths = []
        jobs = [job for job in map(_read_job, paths) if job is not None]
        self._jobs_read = (now, jobs)
        return jobs

    def _write(self, job: Job) -> None:
        try:
            write_json(self.dir / f"{job.id}.json", {"format": JOB_FORMAT, **asdict(job)})
        except WriteError as e:
            raise Refused(507, f"cannot record the job ({e}); the server's disk or folder needs its operator") from None

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        try:
            self.dir.mkdir(exist_ok=True)
            with _exclusive(self.dir / ".lock"):
                yield
        except PermissionError as e:
            raise Refused(507, f"cannot write in {self.folder.name}/ ({e.strerror}); training from the page needs a "
                          "folder the server may write in") from None

    def _training_pids(self, jobs: list[Job]) -> set[int]:
        """The processes training now: the jobs' (started, not ended) and those writing a run in the folder."""
        pids = {j.pid for j in jobs if j.started is not None and j.ended is None and j.pid}
        try:
            found = runs.run_dirs(self.folder)
        except OSError:
            found = []
        for run_dir in found:
            if runs.is_running(run_dir):
                pids.add(runs.lock_holder(run_dir) or -len(pids) - 1)  # another machine's process counts too
        return pids


def _line_start(path: Path, position: int) -> int:
    """`position` if a line of `path` starts there (a client's Last-Event-ID), else 0: from the start."""
    if position <= 0:
        return 0
    try:
        with open(path, "rb") as f:
            f.seek(position - 1)
            return position if f.read(1) == b"\n" else 0
    except OSError:
        return 0


def _read_from(path: Path, position: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(position)
            return f.read(1 << 20)
    except OSError:
        return b""


# ---------------------------------------------------------------------------
# The models of the folder

T = TypeVar("T")


@dataclass
class _Loaded(Generic[T]):
    key: tuple
    model: T | None  # None: nothing to serve yet (no committed epoch), or it could not be loaded
    commit: str | None = None


@dataclass
class ModelFolder(Generic[T]):
    """The models of the runs under `folder`, as they are now: a run appears once it has a committed epoch
    and is loaded again (`load(name, run_dir)`) when its files change and its commit id with them. Named by
    their path under the folder, as `mnistlab runs FOLDER` lists them."""

    folder: Path
    load: Callable[[str, Path], T]
    commit_of: Callable[[T], str | None]
    models: dict[str, T] = field(default_factory=dict)
    default: str | None = None  # the run committed most recently
    _loaded: dict[str, _Loaded[T]] = field(default_factory=dict)
    _looked: float = -math.inf
    _refreshing: bool = False

    async def current(self, now: bool = False) -> dict[str, T]:
        """The models, looked for again when the last look is more than REFRESH seconds old (`now`: always).
        While one request looks, the others use the models as they were."""
        if (now or time.monotonic() - self._looked > REFRESH) and not self._refreshing:
            self._refreshing = True
            try:
                await anyio.to_thread.run_sync(self.refresh)
            finally:
                self._refreshing = False
        return self.models

    def refresh(self) -> None:
        loaded: dict[str, _Loaded[T]] = {}
        newest: tuple[int, str] | None = None
        try:
            found = runs.run_dirs(self.folder)
        except OSError:
            found = []
        for run_dir in found:
            name = run_name_of(self.folder, run_dir)
            key = _key(run_dir, STATE, META, WEIGHTS)
            kept = self._loaded.get(name)
            if kept is None or kept.key != key:
                kept = self._reload(name, run_dir, key, kept)
            loaded[name] = kept
            if kept.model is not None:
                changed = max((k[1] for k in key if k), default=0)
                if newest is None or changed > newest[0]:
                    newest = (changed, name)
        self._loaded = loaded
        self.models = {n: e.model for n, e in loaded.items() if e.model is not None}
        self.default = newest[1] if newest else None
        self._looked = time.monotonic()

    def _reload(self, name: str, run_dir: Path, key: tuple, kept: _Loaded[T] | None) -> _Loaded[T]:
        try:
            model = self.load(name, run_dir)
        except (MnistlabError, OSError):
            return _Loaded(key, None)  # no epoch committed yet, or damaged: `runs` says which
        commit = self.commit_of(model)
        if kept is not None and kept.model is not None and commit is not None and commit == kept.commit:
            return _Loaded(key, kept.model, commit)  # the files were rewritten, the model is the same
        return _Loaded(key, model, commit)
