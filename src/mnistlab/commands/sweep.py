"""Sweeps: many configurations trained in batched groups, one run directory each, and a results table.

A sweep folder holds:

    sweep.json           the plan: every configuration, its run's name and its group (written once)
    runs/<name>/         one run directory per configuration, exactly as `mnistlab train` writes one
    diverged/<name>.json the runs whose loss stopped being finite (their last good epoch is kept)
    results.csv          one row per configuration: mean and spread of its accuracies over the seeds
    runs.csv             one row per run
    results.png          validation accuracy against each swept value, with the spread over seeds

Configurations that differ only in the per-member fields (`batched.MEMBER_FIELDS`:
seed, lr, momentum, Nesterov, weight decay, schedule) form a group and train as
one batched model on one device; groups train one after another. The members
of a group share one batch order and one validation split, those of the
group's first seed (recorded as each run's `data_seed`), so every run in the
folder is exactly the single run of its own config.json.

A sweep can be split into shards (`--shard I/N`, or the processes of
torchrun): each trains its share of the groups into the same folder, and the
table is built from the run directories once all are done (`--collect`).
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import statistics
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from ..base.config import RECIPES, Config, ConfigError
from ..base.errors import Interrupted, RunError, UsageError
from ..base.files import allow_open_files, read_json, write_json, write_text
from ..core import distributed, runs
from ..core.batched import group_key
from ..core.engine import train_group
from .figures import save_png, sweep_figure

Log = Callable[[str], None]

PLAN = "sweep.json"
RUNS = "runs"
RESULTS = "results.csv"
RUNS_TABLE = "runs.csv"
FIGURE = "results.png"
PLAN_FORMAT = 1
FILES_PER_RUN = 2  # open while a run trains: its lock and its events.jsonl
FILES_BESIDE = 64  # what the process holds open besides (libraries, data, the terminal), with room to spare
DEFAULT_VAL_SIZE = 5000  # images held out of training to rank the configurations (not the test split)
NOT_SWEPT = ("recipe", "device", "ensemble")  # fields a sweep does not take as lists


# ---------------------------------------------------------------------------
# The plan

@dataclass
class Planned:
    name: str
    config: Config
    group: int


@dataclass
class Plan:
    swept: list[str]  # the fields given several values (seed included when there are several)
    runs: list[Planned]
    data_dir: str | None = None  # the folder the sweep trains from (None: the usual places), for --resume
    shards: int | None = None  # the independent jobs (--shard I/N) it is split into, as its first shard said

    def to_dict(self) -> dict[str, Any]:
        return {"format": PLAN_FORMAT, "swept": self.swept, "data_dir": self.data_dir, "shards": self.shards,
                "runs": [{"name": r.name, "group": r.group, "config": r.config.to_dict()} for r in self.runs]}

    @classmethod
    def from_dict(cls, d: Any, where: Path) -> "Plan":
        try:
            if d.get("format") != PLAN_FORMAT:
                raise ValueError(f"format {d.get('format')!r}, expected {PLAN_FORMAT}")
            data_dir, shards = d.get("data_dir"), d.get("shards")
            if data_dir is not None and not isinstance(data_dir, str):
                raise ValueError(f"data_dir is {data_dir!r}")
            if shards is not None and not (isinstance(shards, int) and not isinstance(shards, bool) and shards > 1):
                raise ValueError(f"shards is {shards!r}")
            return cls(list(d["swept"]), [Planned(r["name"], Config.from_dict(r["config"]), int(r["group"]))
                                          for r in d["runs"]], data_dir, shards)
        except (AttributeError, KeyError, TypeError, ValueError, ConfigError) as e:
            raise RunError(f"{where}: not a sweep plan of this mnistlab version ({e})") from None

    def groups(self) -> list[list[int]]:
        """Run indices per group, in plan order."""
        out: dict[int, list[int]] = {}
        for i, r in enumerate(self.runs):
            out.setdefault(r.group, []).append(i)
        return list(out.values())


def parse_list(name: str, text: str) -> list[Any]:
    """A flag's comma list as values of the field's type (`--hidden 128x64,256x128`)."""
    hints = typing.get_type_hints(Config)
    kind = hints[name]
    items = [t.strip() for t in text.split(",")]
    if not all(items):
        raise UsageError(f"--{name.replace('_', '-')} {text}: an empty value in the list")
    try:
        if typing.get_origin(kind) is tuple:
            return [tuple(int(v) for v in item.lower().split("x")) for item in items]
        if kind is bool:
            truth = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}
            return [truth[item.lower()] for item in items]
        return [kind(item) for item in items]
    except (KeyError, ValueError):
        what = {bool: "true or false", int: "integers", float: "numbers"}.get(kind, "sizes such as 128x64")
        raise UsageError(f"--{name.replace('_', '-')} {text}: expected a comma list of {what}") from None


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """A sweep file: `recipe`, `seeds` and Config fields; a list value (a list of lists for hidden) is swept."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such sweep file") from None
    except (OSError, ValueError) as e:  # TOMLDecodeError is a ValueError
        raise UsageError(f"{path}: not a readable TOML file ({e})") from None
    known = {f.name for f in fields(Config)} | {"seeds"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise UsageError(f"{path}: unknown keys {', '.join(unknown)} (use Config fields, recipe and seeds)")
    values: dict[str, Any] = {}
    for name, value in doc.items():
        if isinstance(value, list) and not value:
            raise UsageError(f"{path}: {name} = []: an empty list; give at least one value")
        if name in ("seeds",) or name in NOT_SWEPT:
            values[name] = value
        elif name == "hidden":
            values[name] = _hidden_sizes(value, path)
        else:
            values[name] = value if isinstance(value, list) else [value]
    return values


def _hidden_sizes(value: Any, path: str | os.PathLike) -> list[tuple[int, ...]]:
    """`hidden = [128, 64]` (one architecture) or `[[128, 64], [256]]` (several), as tuples of sizes."""
    def sizes(v: Any) -> bool:
        return isinstance(v, list) and bool(v) and all(isinstance(h, int) and not isinstance(h, bool) for h in v)

    if sizes(value):
        return [tuple(value)]
    if isinstance(value, list) and all(sizes(v) for v in value):
        return [tuple(v) for v in value]
    raise UsageError(f"{path}: hidden = {value!r}: expected a list of sizes such as [128, 64], or a list of such "
                     "lists to sweep several, e.g. [[128, 64], [256]]")


def make_plan(values: dict[str, Any], recipe: str | list[str] | None = None, seeds: int | None = None) -> Plan:
    """The configurations of a grid: `values` maps Config fields to lists of values.

    Every combination of the listed values is a configuration, for each seed
    (`seeds` seeds from the first --seed, or the --seed list). The validation
    split defaults to DEFAULT_VAL_SIZE images.
    """
    values = dict(values)
    recipes = recipe if isinstance(recipe, list) else [recipe or values.pop("recipe", None) or "default"]
    values.pop("recipe", None)
    for name in recipes:
        if name not in RECIPES:
            raise UsageError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    for name in NOT_SWEPT:
        if name in values and name != "device":
            raise UsageError(f"a sweep trains single networks; {name} is not a sweep field"
                             + (" (use mnistlab train --ensemble K)" if name == "ensemble" else ""))
    device = values.pop("device", None)
    seed_list = values.pop("seed", None)
    count = values.pop("seeds", None) if seeds is None else seeds
    if count is not None:
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise UsageError(f"--seeds must be a number of seeds >= 1 (got {count!r})")
        if seed_list is not None and len(seed_list) > 1:
            raise UsageError("give --seed as a list or --seeds N (from one --seed), not both")
        first = seed_list[0] if seed_list else None
        seed_list = None if first is None else [first + i for i in range(count)]
    values.setdefault("val_size", [DEFAULT_VAL_SIZE])
    order = [f.name for f in fields(Config)]
    grid_fields = sorted((name for name in values if name != "seed"), key=order.index)  # names in a fixed order
    swept = (["recipe"] if len(recipes) > 1 else []) + [name for name in grid_fields if len(values[name]) > 1]
    planned: list[tuple[str, Config]] = []
    for base_name in recipes:
        base = RECIPES[base_name]
        seeds_here = seed_list or ([base.seed + i for i in range(count)] if count else [base.seed])
        for combo in itertools.product(*(values[name] for name in grid_fields)):
            overrides = dict(zip(grid_fields, combo))
            if device is not None:
                overrides["device"] = device
            for seed in seeds_here:
                try:
                    config = base.replace(**overrides, seed=seed)
                except ConfigError as e:
                    raise UsageError(f"{e}") from None
                planned.append((run_name(config, swept, len(seeds_here) > 1 or "seed" in swept), config))
    if len({seed for _, c in planned for seed in [c.seed]}) > 1:
        swept.append("seed")
    names = [n for n, _ in planned]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise UsageError(f"two configurations of the sweep are the same ({duplicate}); list each value once")
    return _grouped(swept, planned)


def run_name(config: Config, swept: list[str], with_seed: bool) -> str:
    """`lr0.003-hidden128x64-seed2`: the swept values, then the seed."""
    parts = [f"{name.replace('_', '-')}{_value_text(getattr(config, name))}" for name in swept if name != "seed"]
    if with_seed or not parts:
        parts.append(f"seed{config.seed}")
    return "-".join(parts)


def _value_text(value: Any) -> str:
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _grouped(swept: list[str], planned: list[tuple[str, Config]]) -> Plan:
    """Group the configurations that can train batched; each group's members take its first seed's order."""
    keys: dict[Config, int] = {}
    first_seed: dict[int, int] = {}
    out = []
    for name, config in planned:
        group = keys.setdefault(group_key(config), len(keys))
        first_seed.setdefault(group, config.order_seed())
        if config.data_seed < 0:
            config = config.replace(data_seed=first_seed[group])
        out.append(Planned(name, config, group))
    return Plan(swept, out)


def write_plan(folder: Path, plan: Plan) -> None:
    """Write the plan, or check that the folder's plan is this one (the shards of one sweep all write it)."""
    path = folder / PLAN
    if path.is_file():
        kept = read_plan(folder)
        same_sweep = {**kept.to_dict(), "shards": None} == {**plan.to_dict(), "shards": None}
        if same_sweep and kept.shards and plan.shards != kept.shards:
            raise UsageError(f"{folder} is split into {kept.shards} shards, as its first shard said; use --shard "
                             f"I/{kept.shards} (a shard of another split would leave configurations untrained)")
        if kept.to_dict() != plan.to_dict():
            raise RunError(f"{folder} holds another sweep; continue it with: mnistlab sweep --resume {folder} "
                           "(or choose another --out)")
        return
    ours = {PLAN, RUNS, RESULTS, RUNS_TABLE, FIGURE}
    if folder.is_dir() and any(p.name not in ours and not p.name.startswith(f".{PLAN}.") for p in folder.iterdir()):
        raise RunError(f"--out {folder}: the folder is not empty and holds no sweep; choose a new or empty folder")
    write_json(path, plan.to_dict())


def read_plan(folder: str | os.PathLike) -> Plan:
    folder = Path(folder)
    try:
        return Plan.from_dict(read_json(folder / PLAN), folder / PLAN)
    except FileNotFoundError:
        raise RunError(f"{folder}: not a sweep folder ({PLAN} is missing)") from None
    except (OSError, ValueError) as e:
        raise RunError(f"{folder / PLAN}: unreadable ({e})") from None


# ---------------------------------------------------------------------------
# Shards

def parse_shard(text: str) -> tuple[int, int]:
    """`I/N` (I from 0) as (I, N)."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard {text}: expected I/N, e.g. 0/4 (shards numbered from 0)") from None
    if not 0 <= index < count:
        raise UsageError(f"--shard {text}: I must be from 0 to N-1")
    return index, count


def shard_units(plan: Plan, index: int, count: int) -> list[list[int]]:
    """The groups (or parts of groups) shard `index` of `count` trains, as lists of run indices.

    Whole groups go to shards, largest first to the least loaded; when there are
    fewer groups than shards, the largest are halved until every shard has one.
    Every shard computes the same split from the same plan.
    """
    units = plan.groups()
    while len(units) < count and max(len(u) for u in units) > 1:
        units.sort(key=len, reverse=True)
        big = units.pop(0)
        units += [big[:len(big) // 2 + len(big) % 2], big[len(big) // 2 + len(big) % 2:]]
    loads = [0] * count
    mine = []
    for unit in sorted(units, key=lambda u: (-len(u), u[0])):
        target = loads.index(min(loads))
        loads[target] += len(unit)
        if target == index:
            mine.append(unit)
    return sorted(mine, key=lambda u: u[0])


# ---------------------------------------------------------------------------
# Training a share

def run_sweep(plan: Plan | None, out: str | os.PathLike | None = None, resume: str | os.PathLike | None = None,
              shard: str | None = None, device: str | None = None, data_dir: str | os.PathLike | None = None,
              log: Callable[[str], None] = print, plots: bool = True,
              tensorboard: bool = False) -> tuple[Path, Results | None]:
    """Train this process's share of a sweep, `plan` into `out` (default runs/sweep[-N]) or the plan kept in
    `resume`, then build the table where this process is the one to.

    The share: `shard` "I/N" for independent jobs, or the torchrun process's rank, or everything.
    Returns the sweep's folder and its results, or None when another process or job builds the table.
    """
    process = distributed.launched()
    if process and shard:
        raise UsageError("under torchrun the processes are the shards; drop --shard")
    if shard and not (out or resume):
        raise UsageError("--shard needs --out DIR, the folder every shard writes to")
    share = parse_shard(shard) if shard else (process.rank, process.world_size) if process else (0, 1)
    if resume:
        plan = read_plan(resume)
        if data_dir is None and plan.data_dir and Path(plan.data_dir).is_dir():
            data_dir = plan.data_dir  # the sweep's own data, as each of its runs remembers it too
        if shard and plan.shards not in (None, share[1]):
            raise UsageError(f"{resume} is split into {plan.shards} shards; use --shard I/{plan.shards}")
    else:
        if data_dir is not None:
            plan.data_dir = str(Path(data_dir).resolve())
        if shard:
            plan.shards = share[1]
    if share[1] > len(plan.runs):
        raise UsageError(f"{'--shard ' + shard if shard else f'{share[1]} processes'}: more shares than the "
                         f"sweep's {len(plan.runs)} runs; use at most {len(plan.runs)}")
    if process:
        distributed.join("gloo", distributed.SWEEP_TIMEOUT)
    try:
        folder = Path(resume) if resume else _new_folder(out, plan, process)
        train_share(folder, plan, share, device, data_dir, log, process=process, tensorboard=tensorboard)
        if process:
            distributed.barrier()
    finally:
        if process:
            distributed.leave()
    if process and not process.leader:
        return folder, None
    if share[1] > 1 and not process:
        log(f"shard {share[0]}/{share[1]} done; once every shard is, build the table with: "
            f"mnistlab sweep --collect {folder}")
        return folder, None
    return folder, collect(folder, plots=plots)


def _new_folder(out: str | os.PathLike | None, plan: Plan, process) -> Path:
    """The sweep's folder with its plan written: `out`, or the first free runs/sweep[-N] (rank 0's choice)."""
    folder = None
    if process is None or process.leader:
        folder = Path(out) if out is not None else None
        if folder is None:
            folder, k = Path("runs") / "sweep", 1
            while folder.exists():
                k += 1
                folder = Path("runs") / f"sweep-{k}"
        write_plan(folder, plan)
    if process is not None:
        folder = distributed.broadcast(folder if process.leader else None)
    return folder


def run_dir(folder: Path, planned: Planned) -> Path:
    return folder / RUNS / planned.name


def train_share(folder: str | os.PathLike, plan: Plan, shard: tuple[int, int] = (0, 1), device: str | None = None,
                data_dir: str | os.PathLike | None = None, log: Log = lambda line: None, process=None,
                tensorboard: bool = False) -> None:
    """Train this shard's groups of the sweep in `folder`, each batched, resuming whatever was kept."""
    folder = Path(folder)
    units = shard_units(plan, *shard)
    for number, unit in enumerate(units, 1):
        members = [plan.runs[i] for i in unit]
        label = f"group {number}/{len(units)}" + (f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else "")
        pending = [m for m in members if not runs.is_run(run_dir(folder, m))
                   or runs.info(run_dir(folder, m)).state not in ("finished", "diverged")]
        if not pending:
            log(f"{label}: {len(members)} runs already finished")
            continue
        # Each run of a group holds two files open while it trains (its lock and its events.jsonl).
        room = max(1, (allow_open_files(FILES_PER_RUN * len(pending) + FILES_BESIDE) - FILES_BESIDE) // FILES_PER_RUN)
        if room < len(pending):
            log(f"{label}: the system lets this process open {FILES_PER_RUN * room + FILES_BESIDE} files, so its "
                f"{len(pending)} runs train {room} at a time")
        for start in range(0, len(pending), room):
            part = pending[start:start + room]
            try:
                train_group([run_dir(folder, m) for m in part], [m.config for m in part], device=device,
                            data_dir=data_dir, resume_command=f"mnistlab sweep --resume {folder}", local=process,
                            log=log, label=f"{label}: ", tensorboard=tensorboard)
            except KeyboardInterrupt:
                raise Interrupted(f"interrupted; every finished epoch is kept in {folder}; continue with: "
                                  f"mnistlab sweep --resume {folder}") from None


# ---------------------------------------------------------------------------
# The table

@dataclass
class Results:
    swept: list[str]
    metric: str  # val_accuracy, or test_accuracy when the sweep held out no validation split
    configurations: list[dict[str, Any]]  # one per configuration over seeds, best first
    runs: list[dict[str, Any]]  # one per run, in plan order
    files: list[Path]


def collect(folder: str | os.PathLike, plots: bool = True) -> Results:
    """Build results.csv, runs.csv and results.png from the sweep's run directories as they are now."""
    folder = Path(folder)
    plan = read_plan(folder)
    rows = [_run_row(folder, p, plan.swept) for p in plan.runs]
    metric = "val_accuracy" if any(p.config.val_size for p in plan.runs) else "test_accuracy"
    configurations = _aggregate(rows, [s for s in plan.swept if s != "seed"], metric)
    files = [folder / RESULTS, folder / RUNS_TABLE]
    write_text(files[0], _csv(configurations))
    write_text(files[1], _csv(rows))
    if plots and any(r[metric] is not None for r in rows):
        files.append(save_png(sweep_figure(rows, [s for s in plan.swept if s != "seed"], metric), folder / FIGURE))
    return Results(plan.swept, metric, configurations, rows, files)


def _run_row(folder: Path, planned: Planned, swept: list[str]) -> dict[str, Any]:
    """One run as its commit says (re-deriving its files if a kill left them behind: `runs.info`)."""
    row: dict[str, Any] = {"name": planned.name}
    for name in swept:
        row[name] = _value_text(getattr(planned.config, name))
    path = run_dir(folder, planned)
    state, summary = "not started", {}
    if runs.is_run(path):
        state = runs.info(path).state
        summary = runs.committed_summary(path) or {}
    losses = summary.get("train_loss") or []
    row.update({"state": state, "epochs": summary.get("epochs", 0), "total_epochs": planned.config.epochs,
                "train_loss": losses[-1] if losses else None, "val_accuracy": summary.get("val_accuracy"),
                "test_accuracy": summary.get("test_accuracy"), "train_seconds": summary.get("train_seconds"),
                "learned_nothing": summary.get("hint") is not None, "hint": summary.get("hint") or ""})
    return row


def _aggregate(rows: list[dict[str, Any]], swept: list[str], metric: str) -> list[dict[str, Any]]:
    by_config: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        by_config.setdefault(tuple(row[s] for s in swept), []).append(row)
    out = []
    for values, members in by_config.items():
        finished = [r for r in members if r["state"] == "finished"]
        entry: dict[str, Any] = dict(zip(swept, values))
        entry.update({"seeds": len(members), "finished": len(finished),
                      "diverged": sum(r["state"] == "diverged" for r in members),
                      "learned_nothing": sum(r["learned_nothing"] for r in members)})
        for key in ("val_accuracy", "test_accuracy", "train_loss"):
            values_ = [r[key] for r in finished if r[key] is not None]
            entry[f"{key}_mean"] = statistics.fmean(values_) if values_ else None
            entry[f"{key}_std"] = statistics.stdev(values_) if len(values_) > 1 else (0.0 if values_ else None)
            if key != "train_loss":
                entry[f"{key}_min"] = min(values_) if values_ else None
                entry[f"{key}_max"] = max(values_) if values_ else None
        out.append(entry)
    out.sort(key=lambda e: -e[f"{metric}_mean"] if e[f"{metric}_mean"] is not None else math.inf)
    return out


def _csv(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def format_table(results: Results) -> str:
    """The configurations, best first: accuracy mean and spread over seeds, and how many finished."""
    metric = results.metric
    swept = [s for s in results.swept if s != "seed"]
    name = "val acc" if metric == "val_accuracy" else "test acc (no validation split)"
    head = [*swept, f"{name} mean", "spread (min-max, std)", "test acc mean", "runs"]
    table = [head]
    for e in results.configurations:
        mean = e[f"{metric}_mean"]
        spread = (f"{100 * e[f'{metric}_min']:.2f}-{100 * e[f'{metric}_max']:.2f}, "
                  f"{100 * e[f'{metric}_std']:.2f}") if mean is not None else "-"
        runs_text = f"{e['finished']}/{e['seeds']} finished" + (f", {e['diverged']} diverged" if e["diverged"] else "")
        test = e["test_accuracy_mean"]
        table.append([*(str(e[s]) for s in swept), f"{100 * mean:.2f}%" if mean is not None else "-", spread,
                      f"{100 * test:.2f}%" if test is not None else "-", runs_text])
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)
