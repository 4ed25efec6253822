"""The `mnistlab` command: parses flags, calls the library, prints what it returns.

Every subcommand is an `add_<name>(sub)` that declares its flags and a
`cmd_<name>(args)` that runs it; `--data-dir`, `--device` and `--json` are
declared by one helper each. Training flags are generated from the fields of
`Config` (help and choices live beside the fields), so nothing is declared twice.
Any `MnistlabError` becomes one line on stderr and its exit code. `serve` alone is imported when it
runs: it needs the optional FastAPI (`mnistlab[serve]`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import re
import signal
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .base.config import DATASET_NAMES, MEASURED, RECIPES, Config
from .base.devices import DEVICE_CHOICES, DEVICE_NAME, select_device
from .base.models import step_flops
from .base.threads import MAX_THREADS, using_threads
from .base.names import SYNTAX
from .base.errors import Interrupted, MnistlabError, UsageError
from .base.files import finite, json_text
from .base import data as data_mod
from .base.data import (DATA_VARIABLE, DEPRECATED_DATA_VARIABLE, cache_root, cache_usage, clear_cache, data_setting,
                        describe, holds, setting_folder)
from .commands.bench import format_bench, format_sweep_bench, run_bench, run_sweep_bench
from .commands import ladder
from .commands.export import export
from .commands.figures import plot_run
from .commands.inspection import format_report, inspect_step, language_from_environment
from .commands.prediction import (expand, figure_path, predict_many, predict_test_index, write_rows,
                                  write_table)
from .commands.progress import Count, Printer
from .commands.sweep import collect, format_table, make_plan, parse_list, read_toml, run_sweep
from .core import tensorboard
from .core.checkpoint import load_checkpoint
from .core.engine import resume, train
from .core.evaluation import evaluate
from .core.runs import follow, is_run, list_runs

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (plus where to find help) and exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------
# Flag types and the flags several commands share

def _parse_type(kind: Any, name: str):
    def parse(text: str):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value for --{name}: {text!r}") from None

    return parse


def _positive(kind: Any, name: str):
    """An argparse type: a finite number > 0, else a one-line error (exit 2)."""
    parse = _parse_type(kind, name)

    def positive(text: str):
        value = parse(text)
        if not 0 < value < float("inf"):
            raise argparse.ArgumentTypeError(f"--{name} must be a number > 0 (got {text})")
        return value

    return positive


def _device_name(text: str) -> str:
    if not DEVICE_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"--device {text}: unknown device; use {DEVICE_CHOICES}")
    return text


def data_dir_flag(p: argparse.ArgumentParser, default_help: str = "the usual places (see mnistlab datasets)") -> None:
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help=f"folder holding the dataset's four IDX files, .gz or raw (default: {default_help})")


def device_flag(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    p.add_argument("--device", type=_device_name, default=default, metavar="DEVICE",
                   help=f"auto, cpu, cuda, cuda:N or mps (default: {default or 'auto'})")


def tensorboard_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tensorboard", action="store_true",
                   help="also write the run's curves and its misclassified test digits for TensorBoard, into "
                   "RUN/tensorboard/ (view them with: tensorboard --logdir runs/; needs mnistlab[tensorboard])")


def _thread_count(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"--threads must be a whole number from 1 to {MAX_THREADS} (got {text})")
    return int(text)


def _thread_counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(_thread_count(part) for part in text.split(","))
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{e}; one count or a comma list such as 1,2") from None


def threads_flag(p: argparse.ArgumentParser, work: Any = None, many: bool = False) -> None:
    """`--threads N`: torch's CPU threads. Without it they are chosen for the work and the machine
    (base/threads.py): `work(args)` estimates the floating-point operations of one step, and main()
    applies the choice before the command runs. With `many`, a comma list the command compares."""
    chosen = ("one for a small network's steps, else one per CPU this process may use and the machine's load "
              "leaves free; OMP_NUM_THREADS and SLURM_CPUS_PER_TASK are honoured")
    if many:
        p.add_argument("--threads", type=_thread_counts, metavar="LIST",
                       help=f"thread counts to compare side by side, e.g. 1,2 (default: the chosen count: {chosen})")
    else:
        p.add_argument("--threads", type=_thread_count, metavar="N",
                       help=f"CPU threads to compute with (default: {chosen})")
    if work is not None:
        p.set_defaults(threads_work=work)


def json_flag(p: argparse.ArgumentParser, what: str = "the result") -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def any_data_flag(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--any-data", action="store_true",
                   help=f"{what} even when the files are recognised as another dataset than the model was "
                   "trained on (MNIST, Fashion-MNIST and KMNIST share file names; their test labels tell them apart)")


def print_json(obj: Any, indent: int | None = 2) -> None:
    """`obj` as valid JSON on stdout: NaN or infinite numbers become null.

    Indented, a list of plain values stays on one line, so that a confusion matrix reads one row per
    line and a loss curve as one list, not one number per line; `indent=None` prints one line.
    """
    print(json_text(obj, indent=None) if indent is None else _indented_json(finite(obj), indent))


def _indented_json(value: Any, indent: int, level: int = 0) -> str:
    nested = isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value))
    if not value or not nested:
        return json.dumps(value, allow_nan=False)  # a plain value, an empty container, a list of plain values
    pad, inner = " " * (indent * level), " " * (indent * (level + 1))
    if isinstance(value, dict):
        items = [f"{inner}{json.dumps(str(k))}: {_indented_json(v, indent, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    items = [inner + _indented_json(v, indent, level + 1) for v in value]
    return "[\n" + ",\n".join(items) + f"\n{pad}]"


def print_flush(line: str) -> None:
    print(line, flush=True)


def print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# What one step of a command costs, for the thread choice (an estimate: 28x28 images, 10 classes)

def _step_flops(config: Config) -> float:
    return float(step_flops(config.model, config.hidden, config.batch_size))


def _evaluate_work(args: argparse.Namespace) -> float:
    return float("inf")  # forward passes of thousands of images: large enough for every core


def _inspect_work(args: argparse.Namespace) -> float:
    return _step_flops(RECIPES["seed"].replace(batch_size=args.batch_size))


# ---------------------------------------------------------------------------
# train

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(Config)
    default = RECIPES["default"]
    group = parser.add_argument_group("training options (each overrides the recipe's value; defaults shown "
                                      "are the default recipe's)")
    for f in dataclasses.fields(Config):
        if f.name in ("recipe", "device"):
            continue
        kind = hints[f.name]
        help_text = f"{f.metadata['help']} (default: {_shown(getattr(default, f.name))})"
        choices = f.metadata.get("choices") or None
        if kind is bool:
            group.add_argument(_flag(f.name), dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(_flag(f.name), dest=f.name, type=_parse_type(int, f.name), nargs="+", default=None,
                               metavar="N", help=help_text)
        else:
            group.add_argument(_flag(f.name), dest=f.name, type=_parse_type(kind, f.name), default=None,
                               choices=choices, help=help_text)
    device_flag(group, default=None)


def given_config_flags(args: argparse.Namespace) -> dict[str, Any]:
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
            if f.name != "recipe" and getattr(args, f.name, None) is not None}


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = given_config_flags(args)
    if "hidden" in overrides:
        overrides["hidden"] = tuple(overrides["hidden"])
    return RECIPES[args.recipe or "default"].replace(**overrides)


def _recipe_list() -> str:
    return "; ".join(f"{name}: {MEASURED[name]['summary']}" for name in RECIPES)


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model and write a run directory",
                       description=f"Train a model. Recipes ({_recipe_list()}); `mnistlab recipes` shows their "
                       "values side by side. Flags override single values of the recipe.")
    p.add_argument("--recipe", choices=list(RECIPES), default=None, help="named preset (default: default)")
    p.add_argument("--out", type=Path, metavar="DIR", help="run directory (default: runs/<recipe>-<dataset>[-N])")
    data_dir_flag(p, "the folder the run was trained from with --resume, else the usual places")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue a run from its last completed epoch (with --epochs N: extend it to N epochs), on "
                   "the data it was trained on")
    any_data_flag(p, "resume")
    p.add_argument("--no-plots", action="store_true", help="do not write figures at the end")
    tensorboard_flag(p)
    p.add_argument("--verbose", action="store_true", help="print the full configuration first")
    json_flag(p, "the summary at the end (progress goes to stderr)")
    threads_flag(p)
    add_config_flags(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    log = print_err if args.json else print_flush
    printer = Printer(log)
    if args.resume:
        given = [_flag(name) for name in given_config_flags(args) if name != "epochs"]
        if given or args.recipe is not None:
            raise UsageError(f"--resume takes the config from the run; drop {', '.join(given) or '--recipe'} "
                             "(only --epochs, --data-dir and --any-data go with --resume)")
        result = resume(args.resume, epochs=args.epochs, data_dir=args.data_dir, any_data=args.any_data,
                        on_event=printer, progress=True, tensorboard=args.tensorboard, threads=args.threads)
    else:
        if args.any_data:
            raise UsageError("--any-data goes with --resume (a new run takes the data it is given)")
        config = config_from_args(args)
        if args.verbose:
            log(f"config: {config.to_json()}")
        result = train(config, out=args.out, data_dir=args.data_dir, on_event=printer, progress=True,
                       tensorboard=args.tensorboard, threads=args.threads)
    if result is None:  # not rank 0 of a torchrun job: rank 0 reports for the job
        return 0
    s = result.summary
    if not args.no_plots:

        for path in plot_run(result.run_dir, data_dir=args.data_dir):
            log(f"figure: {path}")
    if args.json:
        print_json({"run_dir": str(result.run_dir), **s})
    elif s["test_accuracy"] is not None:
        print(f"test accuracy {100 * s['test_accuracy']:.2f}%  train time {s['train_seconds']:.2f}s  "
              f"run: {result.run_dir}")
    else:
        print(f"run: {result.run_dir}")
    return 0


# ---------------------------------------------------------------------------
# runs, recipes

def add_runs(sub) -> None:
    p = sub.add_parser("runs", help="list the runs in a folder, or follow one live",
                       description="One line per run directory under DIR (the runs of sweep folders too): recipe, "
                       "dataset, epochs done of planned, test accuracy, training time, and state (finished; "
                       "resumable: stopped before its last epoch; running: a process is writing it; diverged; "
                       "damaged: what is missing, and what can still be used). With --follow RUN: the run's "
                       "events from its start, then as they come, until it ends.")
    p.add_argument("dir", nargs="?", type=Path, default=Path("runs"), metavar="DIR",
                   help="folder holding run directories, or one run directory (default: runs)")
    p.add_argument("--follow", action="store_true",
                   help="DIR is one run: print its events as it trains, until it ends (with --json: one JSON "
                   "object a line, as in its events.jsonl)")
    json_flag(p, "the list")
    p.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    if args.follow:

        if not (args.dir.is_dir() and is_run(args.dir)):
            raise UsageError(f"--follow {args.dir}: not a run directory; give one run (see mnistlab runs)")
        printer = Printer(print_flush, endings=True)
        for e in follow(args.dir):
            if args.json:
                print(json_text(e, indent=None), flush=True)
            else:
                printer(e)
        return 0
    found = list_runs(args.dir)
    if args.json:
        print_json([r.to_dict() for r in found])
        return 0
    if not found:
        print(f"no runs in {args.dir}")
        return 0
    width = max(4, *(len(r.name) for r in found))
    print(f"{'name':<{width}}  {'recipe':<8} {'dataset':<13} {'epochs':>7}  {'test acc':>8}  {'time':>8}  state")
    for r in found:
        acc = f"{100 * r.test_accuracy:.2f}%" if r.test_accuracy is not None else "-"
        epochs = f"{r.epochs}/{r.total_epochs}" if r.total_epochs else "-"
        print(f"{r.name:<{width}}  {r.recipe or '-':<8} {r.dataset or '-':<13} {epochs:>7}  {acc:>8}  "
              f"{r.train_seconds:>7.1f}s  {r.state}")
        for text in (r.problem, r.usable):
            if text:
                print(f"{'':<{width}}  {text}")
    return 0


def add_recipes(sub) -> None:
    p = sub.add_parser("recipes", help="every recipe's values side by side, with measured accuracy and time",
                       description="The training recipes: each value (the flags of `mnistlab train`), and the "
                       "test accuracy and training time measured for the documentation (docs/recipes.md).")
    json_flag(p, "the recipes")
    p.set_defaults(func=cmd_recipes)


def cmd_recipes(args: argparse.Namespace) -> int:
    if args.json:
        print_json({name: {"config": c.to_dict(), "measured": MEASURED[name]} for name, c in RECIPES.items()})
        return 0
    names = list(RECIPES)
    rows = [(_flag(f.name), [_shown(getattr(RECIPES[n], f.name)) for n in names])
            for f in dataclasses.fields(Config) if f.name != "recipe"]
    rows += [("test accuracy", [f"{100 * MEASURED[n]['test_accuracy']:.2f}%" for n in names]),
             ("training time", [MEASURED[n]["train_time"] for n in names])]
    width = max(len(r[0]) for r in rows)
    cols = [max(len(n), *(len(r[1][i]) for r in rows)) for i, n in enumerate(names)]
    print(" " * width + "  " + "  ".join(n.ljust(c) for n, c in zip(names, cols)))
    for label, values in rows:
        print(label.ljust(width) + "  " + "  ".join(v.ljust(c) for v, c in zip(values, cols)))
    print(f"\nmeasured: {MEASURED['machine']}")
    return 0


# ---------------------------------------------------------------------------
# evaluate, datasets

def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="test accuracy, per-class accuracy, confusion matrix",
                       description="Evaluate a trained model on its dataset's test split: accuracy, accuracy "
                       "of each class, and the confusion matrix (rows: true class, columns: predicted; with "
                       "--json one row per line). The model is rebuilt from its checkpoint; the data comes "
                       "from --data-dir, else the folder the model was trained from, else the usual places.")
    p.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT",
                   help="a run directory, or a model.safetensors / model.json checkpoint")
    data_dir_flag(p, "the folder the model was trained from, else the usual places")
    any_data_flag(p, "evaluate")
    device_flag(p)
    threads_flag(p, _evaluate_work)
    json_flag(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    result = evaluate(args.checkpoint, data_dir=args.data_dir, device=args.device, any_data=args.any_data)
    if args.json:
        print_json(result.to_dict())
        return 0
    print(f"{result.checkpoint} on {result.dataset} test split")
    print(f"accuracy: {100 * result.accuracy:.2f}% ({result.correct}/{result.total})")
    if result.member_accuracy is not None:
        print(f"ensemble of {len(result.member_accuracy)}: each member alone "
              + ", ".join(f"{100 * a:.2f}%" for a in result.member_accuracy))
    print("per-class accuracy:")
    for name, acc in zip(result.classes, result.per_class_accuracy):
        print(f"  {name:>12}        -  (no test image)" if math.isnan(acc) else f"  {name:>12}  {100 * acc:6.2f}%")
    print("confusion matrix (rows: true class, columns: predicted):")
    print(result.confusion_text())
    return 0


def add_datasets(sub) -> None:
    p = sub.add_parser("datasets", help="known datasets, where each is found or would be cached, "
                       "and the parsed cache's size; or one dataset (your own too) read and summed up",
                       description="Without NAME: every dataset known by name, its classes, where its files were "
                       "found (--data-dir, then $MNISTLAB_DATA, then the usual places) or where a download would "
                       "put them, and the size of the parsed cache; with --data-dir, which dataset the folder "
                       "holds, recognised by its test labels, as train and evaluate do. With NAME (a known name, "
                       "folder:PATH or csv:TRAIN.csv[,TEST.csv]): read the dataset as training would (checking it, "
                       "caching it) and show its classes and how many images each split holds.")
    p.add_argument("name", nargs="?", metavar="NAME", help="a dataset to read and sum up (nothing is downloaded)")
    data_dir_flag(p, "none: only the usual places")
    p.add_argument("--skip-bad", action="store_true",
                   help="with a folder or CSV dataset: go on without the files or rows that cannot be read")
    p.add_argument("--clear-cache", action="store_true",
                   help="delete the parsed arrays cached for fast loading and say how much that freed; "
                   "downloaded IDX files are kept")
    json_flag(p, "the list")
    p.set_defaults(func=cmd_datasets)


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _dataset_summary(args: argparse.Namespace) -> int:
    """`mnistlab datasets NAME`: the dataset read, its source line, its classes with their counts."""
    found = data_mod.summary(data_mod.load(args.name, args.data_dir, download_missing=False, progress=True,
                                           any_data=True, skip_bad=args.skip_bad))
    if args.json:
        print_json(found)
        return 0
    print(f"{found['name']}: {found['title']}")
    print(f"  {found['source']}")
    print(f"  {len(found['classes'])} classes, {found['train']} training and {found['test']} test images:")
    width = max(len(c["name"]) for c in found["classes"])
    for c in found["classes"]:
        print(f"    {c['name']:<{width}}  {c['train']:>7} train  {c['test']:>7} test")
    return 0


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def _holds_line(held: dict[str, Any]) -> str:
    """What a data folder holds, as train will take it: `DIR holds mnist (recognised by ...)`."""
    if held["recognised"]:
        return (f"{held['folder']} holds {held['recognised']} (recognised by {held['how']}): "
                f"train --data-dir takes it as --dataset {held['recognised']}")
    if held["datasets"]:
        return (f"{held['folder']} holds IDX files that are not recognised as a known dataset (your own?): "
                "train --data-dir takes them as whichever --dataset you name")
    return (f"{held['folder']} holds no dataset's four IDX files (missing {', '.join(held['missing'])}; "
            ".gz or uncompressed)")


def _setting_line() -> str:
    """What $MNISTLAB_DATA is taken as: a dataset folder, a cache folder, or unset."""

    setting, folder = data_setting(), setting_folder()
    if setting is None:
        return f"{DATA_VARIABLE} is not set: the cache folder (downloads, parsed cache) is {cache_root()}"
    variable = DATA_VARIABLE if os.environ.get(DATA_VARIABLE) else DEPRECATED_DATA_VARIABLE
    if folder is None:
        return f"{variable}={setting}: the cache folder (downloads, parsed cache)"
    held = holds(folder)
    what = (f"{held['recognised']} (recognised by {held['how']})" if held["recognised"] else
            "IDX files not recognised as a known dataset, looked in first for every dataset")
    return f"{variable}={setting}: holds {what}; downloads and the parsed cache go to {cache_root()}"


def cmd_datasets(args: argparse.Namespace) -> int:
    if args.name is not None and not args.clear_cache:
        return _dataset_summary(args)
    if args.skip_bad:
        raise UsageError("--skip-bad goes with a folder or CSV dataset named as NAME")
    if args.clear_cache:
        if args.data_dir is not None or args.name is not None:
            raise UsageError(f"--clear-cache removes the parsed cache only; drop "
                             f"{'--data-dir' if args.data_dir is not None else args.name}")
        freed = clear_cache()
        if args.json:
            print_json(freed)
        else:
            print(f"parsed cache {freed['folder']}: removed {_files(freed['files'])}, freed "
                  f"{_megabytes(freed['bytes'])} (downloaded IDX files are kept)")
        return 0
    rows = describe(args.data_dir)
    if args.json:
        print_json(rows)
        return 0
    indent = " " * 17
    if args.data_dir is not None:
        print(_holds_line(holds(args.data_dir)))
    else:
        print(_setting_line())
    for row in rows:
        print(f"{row['name']:<16} {row['title']}")
        if not row["files"]:
            print(f"{indent}{row['location']}")
        elif row["found"]:
            print(f"{indent}found in {row['location']}")
        elif args.data_dir is not None:
            print(f"{indent}not found: {row['problems'][0]}")
            continue
        elif "archive" in row:
            print(f"{indent}not unpacked yet; {row['archive']} (downloaded) holds it")
        else:
            print(f"{indent}not found; would be downloaded to {row['location']}")
            print(f"{indent}(looked in {', '.join(row['searched'])})")
        for problem in row.get("problems", []):
            print(f"{indent}passed over: {problem}")
    usage = cache_usage()
    if "problem" in usage:
        print(f"{'parsed cache':<16} {usage['problem']}")
        return 0
    print(f"{'parsed cache':<16} {usage['folder']}: {_files(usage['files'])}, {_megabytes(usage['bytes'])}"
          + (" (mnistlab datasets --clear-cache empties it)" if usage["files"] else ""))
    return 0


# ---------------------------------------------------------------------------
# predict

def add_predict(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify your own images (photos, drawings, a folder, a CSV) or an item of the test split",
        description="Classify image files: PNG, JPEG, BMP, GIF, WebP, TIFF; grey, colour, palette or "
        "transparent (transparent pixels are paper); any size. Each is prepared the way MNIST was: "
        "EXIF rotation applied, ink made bright on black (dark ink on white is detected and inverted), "
        "the paper's level and shadows removed, cropped to the ink, fitted into 20x20 with its aspect "
        "ratio kept, and placed in 28x28 with its centre of mass at the centre. A folder stands for its "
        "images (at any depth, in natural order), a CSV file for its rows (Kaggle's digit-recognizer layout, "
        "each row a 28x28 image taken as it is); they are classified 512 at a time. --csv FILE writes one "
        "row per image instead (--kaggle: ImageId,Label). A file that cannot be read is reported (on stderr, "
        "or in the table's error column) and the others are still classified; the exit code is then 1.")
    p.add_argument("model", metavar="MODEL", help="run directory or checkpoint")
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image files, folders of images or CSV files (optional with --test-index)")
    p.set_defaults(more_files="images")
    p.add_argument("--top-k", type=_parse_type(int, "top-k"), default=3, metavar="K",
                   help="show the K most likely classes (default: 3)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per image per line (JSON Lines): file, prediction (class "
                   "index), label (class name), probabilities (all classes), top_k; or file and error")
    p.add_argument("--csv", type=Path, metavar="FILE", dest="table",
                   help="write a table instead, one row per image in the order given: id (the file, or "
                   "FILE.csv#ROW), prediction (class name), probability, error, then prob_<class> for every "
                   "class; '-' for stdout")
    p.add_argument("--kaggle", action="store_true",
                   help="with --csv: write Kaggle's submission format, ImageId (from 1, in the order given) "
                   "and Label")
    p.add_argument("--figure", type=Path, metavar="PATH",
                   help="write the prepared image beside a bar chart of the class probabilities (PNG); "
                   "with several images, one file each named PATH plus '-<image name>' "
                   "(--figure fig.png: fig-digit1.png, fig-digit2.png, ...)")
    p.add_argument("--save-prepared", type=Path, metavar="DIR",
                   help="write the 28x28 images the network saw, as DIR/<image name>.png")
    p.add_argument("--invert", action=argparse.BooleanOptionalAction, default=None,
                   help="--invert: the ink is dark on a light background (photos, drawings); --no-invert: "
                   "light on dark, as in MNIST (default: detected for each image)")
    p.add_argument("--test-index", type=_parse_type(int, "test-index"), metavar="N",
                   help="also classify item N of the model's test split (shows its true label)")
    data_dir_flag(p, "for --test-index: the folder the model was trained from, else the usual places")
    any_data_flag(p, "with --test-index: classify the item")
    p.set_defaults(func=cmd_predict)


def _prediction_line(r: dict[str, Any]) -> str:
    """`digit.png: 7 (98.1%)   top-3: 7 98.1%, 1 1.2%, 9 0.3%`"""
    line = f"{r['file']}: {r['label']} ({100 * r['probabilities'][r['prediction']]:.1f}%)"
    if "true_label" in r:
        line += f"   true: {r['true_label']} ({'right' if r['true_index'] == r['prediction'] else 'wrong'})"
    top = ", ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in r["top_k"])
    return f"{line}   top-{len(r['top_k'])}: {top}"


SHOWN_ERRORS = 10  # errors printed on stderr after a table; the table's error column has them all


def cmd_predict(args: argparse.Namespace) -> int:
    if not args.images and args.test_index is None:
        raise UsageError("give at least one IMAGE, or --test-index N")
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1 (got {args.top_k})")
    if args.kaggle and args.table is None:
        raise UsageError("--kaggle goes with --csv FILE (e.g. --csv submission.csv)")
    if args.table is not None and (args.json or args.figure or args.test_index is not None):
        raise UsageError("--csv writes the table alone; drop "
                         + ", ".join(f for f, v in (("--json", args.json), ("--figure", args.figure),
                                                    ("--test-index", args.test_index is not None)) if v))
    checkpoint = load_checkpoint(args.model)
    inputs = expand(args.images)
    if args.table is not None:
        return _predict_table(args, checkpoint, inputs)
    results = []
    # Errors of single files come back as results; a raised error stops everything.
    if args.test_index is not None:
        name = f"test-{args.test_index}"
        figure = figure_path(args.figure, name, many=bool(inputs)) if args.figure else None
        results.append(predict_test_index(checkpoint, args.test_index, args.data_dir, args.top_k,
                                          args.save_prepared, figure, any_data=args.any_data))
    count = Count(len(inputs), "predict", "images", print_err)
    results += predict_many(checkpoint, inputs, top_k=args.top_k, invert=args.invert,
                            save_prepared=args.save_prepared, figure=args.figure, progress=count.update)
    count.close()
    for r in results:
        if "error" in r:
            print(f"error: {r['file']}: {r['error']}", file=sys.stderr)
        if args.json:
            print_json(r, indent=None)
        elif "error" not in r:
            print(_prediction_line(r))
            for key in ("figure", "prepared"):
                if key in r:
                    print(f"  {key}: {r[key]}")
    return 1 if any("error" in r for r in results) else 0


def _predict_table(args: argparse.Namespace, checkpoint, inputs) -> int:
    """`predict --csv FILE`: the table (or Kaggle's submission) of every image, then one summary line."""

    count = Count(len(inputs), "predict", "images", print_err)
    answers = predict_many(checkpoint, inputs, invert=args.invert, save_prepared=args.save_prepared,
                           progress=count.update)
    to_stdout = str(args.table) == "-"
    if to_stdout:
        written = {"path": "stdout", **write_rows(sys.stdout, answers, checkpoint.classes, args.kaggle)}
    else:
        written = write_table(answers, checkpoint.classes, args.table, args.kaggle)
    count.close()
    errors = written["errors"]
    for name, error in errors[:SHOWN_ERRORS]:
        print_err(f"error: {name}: {error}")
    if len(errors) > SHOWN_ERRORS:
        print_err(f"... and {len(errors) - SHOWN_ERRORS} more errors (the table's error column has them all)"
                  if not args.kaggle else f"... and {len(errors) - SHOWN_ERRORS} more errors")
    report = print_err if to_stdout else print  # stdout holds the table itself
    report(f"wrote {written['path']}: {written['rows']} images, {written['rows'] - len(errors)} predicted, "
              f"{len(errors)} error{'s' if len(errors) != 1 else ''}"
              + (" (Kaggle's ImageId,Label; an image in error has an empty Label)" if args.kaggle else ""))
    return 1 if errors else 0


# ---------------------------------------------------------------------------
# plot, inspect, bench

def add_plot(sub) -> None:
    p = sub.add_parser("plot", help="write a run's figures as PNG files",
                       description="Write RUN_DIR/figures/: curves.png (loss and accuracy per epoch), "
                       "confusion.png, misclassified.png (test images) and samples.png (training images).")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory written by mnistlab train")
    data_dir_flag(p, "the folder the run was trained from, else the usual places")
    any_data_flag(p, "draw the figures")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    for path in plot_run(args.run_dir, data_dir=args.data_dir, any_data=args.any_data):
        print(path)
    return 0


def add_inspect(sub) -> None:
    p = sub.add_parser(
        "inspect", help="one training step taken apart: loss, grad_fn chain, gradients, update",
        description="Run one SGD step of the notebook on a real training batch and show, line by line: "
        "the network, the loss, the grad_fn chain, each parameter's gradient and update (checked "
        "against lr * grad), a finite-difference check of autograd, gradients accumulating without "
        "zero_grad(), and what torch.no_grad() changes.")
    p.add_argument("--model", default="mlp", metavar="mlp|cnn|RUN_DIR",
                   help="a fresh mlp (the notebook's network) or cnn, initialised from --seed; or a run "
                   "directory or checkpoint to inspect a trained model (default: mlp)")
    p.add_argument("--lr", type=_positive(float, "lr"), default=0.003, help="SGD learning rate (default: 0.003)")
    p.add_argument("--batch-size", type=_positive(int, "batch-size"), default=64,
                   help="images in the batch (default: 64)")
    p.add_argument("--seed", type=_parse_type(int, "seed"), default=0,
                   help="picks the batch, the initial weights and the checked entries (default: 0)")
    p.add_argument("--dataset", help=f"{', '.join(DATASET_NAMES)}, or your own data as {SYNTAX} "
                   "(default: mnist, or the checkpoint's dataset)")
    data_dir_flag(p)
    p.add_argument("--lang", choices=("en", "fr"), default=None,
                   help="language of the explanations, the numbers being the same: en or fr (default: fr "
                   "when the locale's language is French, from LC_ALL, LC_MESSAGES or LANG, else en)")
    threads_flag(p, _inspect_work)
    json_flag(p, "the numbers")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    result = inspect_step(args.model, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                          dataset=args.dataset, data_dir=args.data_dir)
    if args.json:
        print_json(result)
    else:
        print(format_report(result, args.lang or language_from_environment()))
    return 0


def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time the notebook's pipeline against ours, side by side",
                       description="Train with the course notebook's pipeline (torchvision's MNIST, "
                       "ToTensor, Normalize, DataLoader, or a faithful re-implementation without "
                       "torchvision) and with ours, alternating runs on the same data and device; "
                       "print seconds per epoch, the speed-up and both losses and accuracies.")
    p.add_argument("--recipe", choices=list(RECIPES), default="seed",
                   help="what ours trains (default: seed, the notebook's own recipe); the notebook "
                   "side always runs as the notebook is written")
    device_flag(p)
    p.add_argument("--epochs", type=_positive(int, "epochs"), default=None,
                   help="epochs per run (default: 1 for seed, else the recipe's own)")
    p.add_argument("--repeats", type=_positive(int, "repeats"), default=None,
                   help="runs of each pipeline (default: 3; with --sweep: 1)")
    p.add_argument("--sweep", action="store_true",
                   help="instead: networks per second for K networks trained batched (K = 1, 8, 64, and 512 on "
                   "a GPU) against one after another, one epoch each, same device")
    p.add_argument("--members", metavar="LIST", help="with --sweep: the numbers of networks, e.g. 1,16")
    p.add_argument("--sequential", type=_positive(int, "sequential"), default=2, metavar="N",
                   help="with --sweep: networks trained one after another per repeat (default: 2; their rate "
                   "does not depend on K)")
    threads_flag(p, many=True)
    data_dir_flag(p)
    json_flag(p, "one document with every raw timing")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    if args.members and not args.sweep:
        raise UsageError("--members goes with --sweep")
    if args.sweep:

        if args.epochs is not None:
            raise UsageError("--sweep times one epoch per network; drop --epochs")
        members = None
        if args.members:
            try:
                members = tuple(int(k) for k in args.members.split(","))
            except ValueError:
                members = (0,)
            if min(members) < 1:
                raise UsageError(f"--members {args.members}: expected a comma list of numbers >= 1, e.g. 1,16")
        results = [run_sweep_bench(args.recipe, device=args.device, members=members, sequential=args.sequential,
                                   repeats=args.repeats or 1, data_dir=args.data_dir, log=print_err, threads=n)
                   for n in args.threads or (None,)]
        if args.json:
            print(json_text(results[0] if len(results) == 1 else results))
        else:
            print("\n\n".join(format_sweep_bench(r) for r in results))
        return 0
    # Progress goes to stderr so that stdout holds only the table or the JSON.
    result = run_bench(args.recipe, device=args.device, epochs=args.epochs, repeats=args.repeats or 3,
                       data_dir=args.data_dir, log=print_err, threads=args.threads)
    print(json_text(result) if args.json else format_bench(result))
    return 0


# ---------------------------------------------------------------------------
# export

def add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="write a trained model as ONNX or TorchScript, normalisation and softmax included",
        description="Write the model of RUN as a file other programs can run without mnistlab: its input is "
        "N x 28 x 28 images as stored in the dataset (uint8, 0 background, 255 ink; or float in [0, 1] with "
        "--input float), its output N x C class probabilities. The normalisation the model was trained "
        "with is done inside. A JSON sidecar (FILE.json) gives the class names, the input and output "
        "contracts, the dataset and the architecture. The file is loaded back and checked against "
        "PyTorch before it is kept. ONNX needs the export extra: pip install \"mnistlab[export]\".")
    p.add_argument("run", metavar="RUN", help="run directory or checkpoint")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default: onnx")
    p.add_argument("--out", type=Path, metavar="PATH",
                   help="file or folder to write to (default: RUN/model.onnx or RUN/model.pt; "
                   "the sidecar is PATH.json)")
    p.add_argument("--input", choices=("uint8", "float"), default="uint8", dest="input_kind",
                   help="what the exported model takes: uint8 pixels 0-255 (default) or float32 in [0, 1]")
    p.add_argument("--force", action="store_true",
                   help="replace the file (and its sidecar) if it exists; without it, export never overwrites")
    json_flag(p, "the sidecar's content")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    info = export(args.run, args.format, out=args.out, input_kind=args.input_kind, force=args.force)
    if args.json:
        print_json(info)
        return 0
    i, o, check = info["input"], info["output"], info["check"]
    print(f"wrote {info['path']} ({args.format}"
          + (f", opset {info['opset']}" if "opset" in info else "") + ")")
    print(f"  input  {i['name']}: {i['dtype']} {' x '.join(map(str, i['shape']))}, "
          f"{i['range'][0]:g} to {i['range'][1]:g} ({i['meaning']})")
    print(f"  output {o['name']}: {o['dtype']} {' x '.join(map(str, o['shape']))}, classes "
          + ", ".join(info["classes"]))
    print(f"  checked: loaded back, same probabilities as PyTorch on {check['images']} images "
          f"(largest difference {check['max_abs_difference']:.1g})")
    print(f"wrote {info['sidecar']}")
    return 0


# ---------------------------------------------------------------------------
# serve

def _byte_size(text: str) -> int:
    """`--max-upload`: bytes, or with a K or M suffix (1024 and 1024**2 bytes)."""
    match = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)i?[bB]?\s*", text)
    if not match or int(match.group(1)) == 0:
        raise argparse.ArgumentTypeError(f"--max-upload must be a size > 0 such as 2M, 500K or 100000 (got {text})")
    return int(match.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2}[match.group(2).lower()]


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"--port must be a number from 0 to 65535 (got {text})")
    return int(text)


def add_serve(sub) -> None:
    p = sub.add_parser(
        "serve", help="the lab: a page to train, draw on and explore networks, and its HTTP API",
        description="Serve a page where you draw (mouse, pen or finger) or drop a picture and see, live, the "
        "class, every class's probability, how the picture was prepared, which pixels pushed the answer and what "
        "the layers make of it; explore a model's mistakes on its test set; and, serving a folder of runs, train "
        "networks from the page and watch them learn (the HTTP API behind it is described at /openapi.json). "
        "Images are prepared exactly as by `mnistlab predict`. Ctrl-C stops the server (and the trainings it "
        "started: their runs stay resumable).")
    p.add_argument("models", nargs="+", metavar="RUN_OR_CHECKPOINT",
                   help="run directories or checkpoints; or one folder of runs (e.g. runs/; an empty one to start): "
                   "every run in it is served as it trains, and the page trains new ones into it")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to "
                   "the network: the API then needs a token, carried by the printed address)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default: 8000; 0: any free port)")
    p.add_argument("--max-upload", type=_byte_size, default=2 * 1024 ** 2, metavar="SIZE",
                   help="largest request body accepted, e.g. 2M, 500K (default: 2M)")
    p.add_argument("--processes", type=_positive_count, default=None, metavar="N",
                   help="server processes (default: one per core, at most 16)")
    p.add_argument("--token", type=_token, default=None,
                   help="the token the API asks for (default: a new random one when --host is not loopback, "
                   "none on loopback); at least 8 letters, digits, '-' or '_'")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer requests for this host name (e.g. a reverse proxy's or a DNS name of "
                   "this machine); repeatable. Other names are refused, against DNS rebinding")
    group = p.add_argument_group("training from the page (serving a folder of runs)")
    data_dir_flag(group)
    group.add_argument("--train-jobs", type=_count("train-jobs"), default=None, metavar="N",
                       help="training processes at once, one torch thread each (default: one per core this process "
                       "may use; 0: no training from the page)")
    group.add_argument("--train-queue", type=_count("train-queue"), default=8, metavar="N",
                       help="training jobs that may wait for a free process (default: 8)")
    group.add_argument("--train-per-client", type=_count("train-per-client", 1), default=2, metavar="N",
                       help="training jobs one client address may have running or waiting (default: 2)")
    group.add_argument("--max-epochs", type=_count("max-epochs", 1), default=20, metavar="N",
                       help="epochs per run at most (default: 20)")
    group.add_argument("--max-train-size", type=_count("max-train-size"), default=0, metavar="N",
                       help="training images per run at most (default: 0, no cap)")
    group.add_argument("--tensorboard", action="store_true",
                       help="the page's runs also write for TensorBoard, into RUN/tensorboard/ (needs mnistlab[tensorboard])")
    p.set_defaults(func=cmd_serve)


def _positive_count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise argparse.ArgumentTypeError(f"--processes must be a number from 1 to 256 (got {text})")
    return int(text)


def _token(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{8,128}", text):
        raise argparse.ArgumentTypeError("--token must be 8 to 128 letters, digits, '-' or '_'")
    return text


def _count(name: str, least: int = 0):
    """An argparse type: a whole number >= `least`, else a one-line error (exit 2)."""

    def count(text: str) -> int:
        if not text.isdigit() or int(text) < least or int(text) > 10**9:
            raise argparse.ArgumentTypeError(f"--{name} must be a whole number from {least} (got {text})")
        return int(text)

    return count


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .commands.jobs import Bounds
        from .commands.serve import default_workers, serve
    except ModuleNotFoundError as e:
        if e.name not in ("fastapi", "uvicorn", "starlette", "multipart", "python_multipart", "anyio"):
            raise
        raise UsageError(f"mnistlab serve needs {e.name}: pip install 'mnistlab[serve]'") from None
    if args.tensorboard:
        tensorboard.require()  # before the server starts: the page's runs would each fail on it
    try:
        bounds = Bounds(jobs=default_workers() if args.train_jobs is None else args.train_jobs,
                        queue=args.train_queue, per_client=args.train_per_client, max_epochs=args.max_epochs,
                        max_train_size=args.max_train_size, tensorboard=args.tensorboard)
        serve(args.models, host=args.host, port=args.port, max_upload=args.max_upload, processes=args.processes,
              token=args.token, allow_hosts=args.allow_host, bounds=bounds, data_dir=args.data_dir, log=print_flush)
    except KeyboardInterrupt:  # Ctrl-C while the models load; once serving, serve() returns
        pass
    print("stopped", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------
# sweep

SWEEP_FIELDS = [f for f in dataclasses.fields(Config) if f.name not in ("recipe", "device", "ensemble")]
# Where a sweep writes a value otherwise than `train` (a list of sizes is one comma-list item).
SWEEP_HELP = {"hidden": "hidden layer sizes of the mlp, one network's sizes joined by x, e.g. --hidden 128x64,256"}


def add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep", help="train a grid of configurations, batched where they share an architecture, and rank them",
        description="Train every combination of the listed values (e.g. --lr 0.001,0.003,0.01 --hidden "
        "128x64,256x128 --seeds 5), or those of a TOML file, one run directory each under OUT/runs/. "
        "Configurations that differ only in seed, lr, momentum, nesterov, weight decay or schedule train at "
        "once as one batched model, sharing one batch order (their first seed's). Prints the configurations "
        "ranked by validation accuracy (mean and spread over seeds; --val-size defaults to 5000 here) and "
        "writes OUT/results.csv, OUT/runs.csv and OUT/results.png. Ctrl-C keeps every finished epoch: "
        "continue with --resume OUT. Under torchrun each process trains its share; --shard I/N does the same "
        "for independent jobs, and --collect OUT builds the table when all are done.")
    p.add_argument("config_file", nargs="?", type=Path, metavar="SWEEP.toml",
                   help="a TOML file of Config fields, recipe and seeds; a list value is swept "
                   "(hidden: a list of lists); flags override its values")
    p.add_argument("--recipe", metavar="LIST", help="recipe(s) the values start from (default: default)")
    p.add_argument("--seeds", type=_positive(int, "seeds"), metavar="N",
                   help="train each configuration with N seeds, from --seed (default: 1 seed)")
    p.add_argument("--out", type=Path, metavar="DIR", help="sweep folder (default: runs/sweep[-N])")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the sweep in DIR (its plan is kept there)")
    p.add_argument("--collect", type=Path, metavar="DIR",
                   help="only build DIR's table and figure from its run directories as they are now")
    p.add_argument("--shard", metavar="I/N", help="train only share I (from 0) of N; the others are trained by "
                   "other jobs into the same --out (e.g. a Slurm job array)")
    data_dir_flag(p)
    device_flag(p, default=None)
    threads_flag(p)
    p.add_argument("--no-plots", action="store_true", help="do not write results.png")
    tensorboard_flag(p)
    json_flag(p, "the table (progress goes to stderr)")
    group = p.add_argument_group("values (each a comma list; every combination is trained)")
    for f in SWEEP_FIELDS:
        group.add_argument(_flag(f.name), dest=f.name, metavar="LIST", help=SWEEP_HELP.get(f.name, f.metadata["help"]))
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    log = print_err if args.json else print_flush
    grid = {f.name: parse_list(f.name, getattr(args, f.name)) for f in SWEEP_FIELDS
            if getattr(args, f.name) is not None}
    given = [_flag(name) for name in grid] + [flag for flag, value in (("--recipe", args.recipe), ("--seeds", args.seeds),
                                                                   ("SWEEP.toml", args.config_file)) if value]
    if args.collect or args.resume:
        if given or (args.collect and args.resume) or args.out:
            raise UsageError(f"{'--collect' if args.collect else '--resume'} takes everything from the sweep's "
                             f"folder; drop {', '.join(given) or '--out/--resume'}")
    if args.collect:
        return _print_sweep(args, collect(args.collect, plots=not args.no_plots), args.collect)
    plan = None
    if not args.resume:
        values = read_toml(args.config_file) if args.config_file else {}
        values.update(grid)
        recipes = args.recipe.split(",") if args.recipe else values.pop("recipe", None)
        plan = make_plan(values, recipes, args.seeds)
    folder, results = run_sweep(plan, out=args.out, resume=args.resume, shard=args.shard, device=args.device,
                                data_dir=args.data_dir, log=log, plots=not args.no_plots, tensorboard=args.tensorboard,
                                threads=args.threads)
    return _print_sweep(args, results, folder) if results is not None else 0


def _print_sweep(args: argparse.Namespace, results, folder: Path) -> int:

    if args.json:
        print(json_text({"folder": str(folder), "metric": results.metric, "swept": results.swept,
                          "configurations": results.configurations, "runs": results.runs}, indent=2))
        return 0
    print(f"sweep {folder}: {len(results.runs)} runs, best first")
    print(format_table(results))
    for path in results.files:
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------
# ladder

def add_ladder(sub) -> None:
    p = sub.add_parser(
        "ladder", help="from the notebook's 90%% to 98-99%%, one change at a time, each step measured here",
        description="Train a fixed sequence of steps, each one change from the step before: the first is the "
        "course notebook's recipe (--recipe seed), the last the track's best (mlp: the notebook's network "
        "trained well, >= 98%; cnn: the conv net, >= 99.3%). Prints one row per step: the change, test accuracy "
        "(mean and spread over the seeds), training seconds (median), time to reach 98% (and 99% on the cnn "
        "track), speed-up against the first row, FLOPs per epoch. Writes OUT/ladder.csv, OUT/ladder.png and one "
        "run directory per step and seed. Interrupted, the same command with the same --out continues it.")
    p.add_argument("--track", choices=("mlp", "cnn"), default="mlp",
                   help="mlp: the notebook's network; cnn: the conv net (slow on a CPU) (default: mlp)")
    p.add_argument("--seeds", type=_positive(int, "seeds"), default=3, metavar="N",
                   help="seeds per step: 0 to N-1 (default: 3)")
    device_flag(p)
    threads_flag(p)
    data_dir_flag(p)
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="the ladder's folder (default: runs/ladder-<track>[-N]); an existing ladder there is "
                   "continued")
    json_flag(p, "the table")
    p.set_defaults(func=cmd_ladder)


def cmd_ladder(args: argparse.Namespace) -> int:
    log = print_err if args.json else print_flush
    result = ladder.run_ladder(args.track, seeds=args.seeds, device=args.device, data_dir=args.data_dir,
                               out=args.out, log=log, on_event=Printer(log), progress=True, threads=args.threads)
    if args.json:
        print_json(result.to_dict())
        return 0
    print(ladder.format_table(result))
    for path in result.files:
        print(f"wrote {path}")
    return 0


# ---------------------------------------------------------------------------

COMMANDS = (add_train, add_evaluate, add_runs, add_recipes, add_datasets, add_predict, add_plot, add_inspect,
            add_bench, add_export, add_serve, add_sweep, add_ladder)


def build_parser() -> Parser:
    parser = Parser(prog="mnistlab", description="Train, understand and use small classifiers on "
                    "MNIST-family images.")
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def _threads(args: argparse.Namespace) -> Any:
    """While the command runs, torch's CPU threads chosen for its work (base/threads.py; its run's device line
    says when the machine is too busy for them), as a context. None for a command that will fail on its
    flags, or one that runs elsewhere than on the CPU."""
    work = args.threads_work(args)
    try:
        if select_device(getattr(args, "device", None) or "auto").type != "cpu":
            return contextlib.nullcontext()
    except MnistlabError:
        return contextlib.nullcontext()  # the command says why
    return using_threads(args.threads, work)


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM (kill, Slurm's time limit) stops like Ctrl-C: what is done is kept


def parse(parser: Parser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments; a command whose positionals take any number of files (`more_files` names them) also gets
    those written after its flags (`predict RUN --top-k 5 a.png b.png`), as people type them."""
    args, extra = parser.parse_known_args(argv)
    dest = getattr(args, "more_files", None)
    if extra and dest and not any(e.startswith("-") and e != "-" for e in extra):
        setattr(args, dest, [*getattr(args, dest), *extra])
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse(parser, argv)
    if hasattr(sys.stdout, "reconfigure"):
        # Names from the command line that are not UTF-8 (kept by Python as surrogates) print as \xNN
        # instead of stopping the output with a UnicodeEncodeError; stderr does so already.
        sys.stdout.reconfigure(errors="backslashreplace")
    previous = signal.signal(signal.SIGTERM, _terminate)
    threads = _threads(args) if hasattr(args, "threads_work") else contextlib.nullcontext()
    try:
        with threads:
            return args.func(args)
    except Interrupted as e:
        print(f"\nmnistlab {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except MnistlabError as e:
        print(f"mnistlab {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"\nmnistlab {args.command}: interrupted", file=sys.stderr)
        return Interrupted.exit_code
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error; silence Python's flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
