"""The `mnistlab` command: parses flags, calls the library, prints what it returns.

Training flags are generated from the fields of `Config`, so every field of a
recipe can be overridden from the command line and nothing is declared twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import typing
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .config import RECIPES, Config
from .errors import MnistlabError, UsageError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one line on stderr (plus where to find help) and exit 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------------------
# Flags from Config fields

FIELD_HELP = {
    "dataset": "mnist, fashion-mnist, kmnist or synthetic (no files needed)",
    "model": "mlp (the notebook's network) or cnn",
    "hidden": "hidden layer sizes of the mlp, e.g. --hidden 128 64",
    "activation": "relu, gelu, tanh or sigmoid",
    "output": "logits (CrossEntropyLoss) or log_softmax (NLLLoss)",
    "optimizer": "sgd or adamw",
    "schedule": "constant or onecycle (linear warm-up, linear decay)",
    "warmup": "fraction of steps spent warming up (onecycle)",
    "shift": "random translation of training images, in pixels",
    "drop_last": "drop the last partial batch of each epoch",
    "mean": "normalisation: x = (x/255 - mean) / std",
    "std": "normalisation: x = (x/255 - mean) / std",
    "val_size": "hold out this many training images for validation",
    "train_size": "train on the first N training images only (0: all)",
    "device": "auto, cpu, cuda or mps",
    "cuda_graph": "capture the training step as a CUDA graph on CUDA",
    "eval_every_epoch": "measure test accuracy after every epoch",
}


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


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(Config)
    group = parser.add_argument_group("training options (override the recipe)")
    for f in dataclasses.fields(Config):
        if f.name == "recipe":
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        help_text = FIELD_HELP.get(f.name, "")
        if kind is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(flag, dest=f.name, type=_parse_type(int, f.name), nargs="+", default=None,
                               metavar="N", help=help_text)
        else:
            group.add_argument(flag, dest=f.name, type=_parse_type(kind, f.name), default=None,
                               help=help_text)


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
                 if f.name != "recipe" and getattr(args, f.name, None) is not None}
    if "hidden" in overrides:
        overrides["hidden"] = tuple(overrides["hidden"])
    base = RECIPES[args.recipe or "default"]
    try:
        return base.replace(**overrides)
    except ValueError as e:
        raise UsageError(str(e)) from None


# ---------------------------------------------------------------------------
# train

def cmd_train(args: argparse.Namespace) -> int:
    from .training import train

    if args.resume:
        given = [f"--{f.name.replace('_', '-')}" for f in dataclasses.fields(Config)
                 if f.name != "recipe" and getattr(args, f.name, None) is not None]
        if given or args.recipe is not None:
            raise UsageError(f"--resume takes the config from the run; drop {', '.join(given) or '--recipe'}")
        config = RECIPES["default"]
    else:
        config = config_from_args(args)
    try:
        result = train(config, out=args.out, data_dir=args.data_dir, resume=args.resume,
                       log=print_flush, progress=True)
    except KeyboardInterrupt:
        print("\ninterrupted; the last completed epoch is saved. Continue with: "
              "mnistlab train --resume RUN (RUN as printed above)", file=sys.stderr)
        return EXIT_INTERRUPTED
    s = result.summary
    acc = s.get("test_accuracy")
    print(f"test accuracy {100 * acc:.2f}%  train time {s['train_seconds']:.2f}s  run: {result.run_dir}"
          if acc is not None else f"run: {result.run_dir}")
    if not args.no_plots:
        from .figures import plot_run

        for path in plot_run(result.run_dir, data_dir=args.data_dir):
            print(f"figure: {path}")
    return 0


def print_flush(line: str) -> None:
    print(line, flush=True)


# ---------------------------------------------------------------------------
# evaluate

def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate

    result = evaluate(args.checkpoint, data_dir=args.data_dir, device=args.device)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    print(f"{result.checkpoint} on {result.dataset} test split")
    print(f"accuracy: {100 * result.accuracy:.2f}% ({result.correct}/{result.total})")
    print("per-class accuracy:")
    for name, acc in zip(result.classes, result.per_class_accuracy):
        print(f"  {name:>12}  {100 * acc:6.2f}%")
    print("confusion matrix (rows: true class, columns: predicted):")
    print(result.confusion_text())
    return 0


# ---------------------------------------------------------------------------
# datasets

def cmd_datasets(args: argparse.Namespace) -> int:
    from .data import describe

    rows = describe(args.data_dir)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    indent = " " * 15
    if args.data_dir is not None:
        print(f"note: mnist, fashion-mnist and kmnist share the same four file names, so {args.data_dir} "
              "is listed for each;\nit holds whichever dataset you name with --dataset.")
    for row in rows:
        print(f"{row['name']:<14} {row['title']}")
        if not row["files"]:
            print(f"{indent}{row['location']}")
        elif row["found"]:
            print(f"{indent}found in {row['location']}")
        else:
            print(f"{indent}not found; would be downloaded to {row['location']}")
            print(f"{indent}(looked in {', '.join(row['searched'])})")
    return 0


# ---------------------------------------------------------------------------
# predict

def add_predict(sub) -> None:
    p = sub.add_parser(
        "predict", help="classify your own images (photos, drawings) or an item of the test split",
        description="Classify image files: PNG, JPEG, BMP, GIF, WebP, TIFF; grey, colour, palette or "
        "transparent (transparent pixels are paper); any size. Each is prepared the way MNIST was: "
        "EXIF rotation applied, ink made bright on black (dark ink on white is detected and inverted), "
        "the paper's level and shadows removed, cropped to the ink, fitted into 20x20 with its aspect "
        "ratio kept, and placed in 28x28 with its centre of mass at the centre. A file that cannot be "
        "read is reported on stderr and the others are still classified; the exit code is then 1.")
    p.add_argument("model", metavar="MODEL", help="run directory or checkpoint")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (optional with --test-index)")
    p.add_argument("--top-k", type=_parse_type(int, "top-k"), default=3, metavar="K",
                   help="show the K most likely classes (default: 3)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object per image per line (JSON Lines): file, prediction (class "
                   "index), label (class name), probabilities (all classes), top_k; or file and error")
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
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="folder holding the dataset's IDX files (for --test-index)")
    p.set_defaults(func=cmd_predict)


def _prediction_line(r: dict[str, Any]) -> str:
    """`digit.png: 7 (98.1%)   top-3: 7 98.1%, 1 1.2%, 9 0.3%`"""
    line = f"{r['file']}: {r['label']} ({100 * r['probabilities'][r['prediction']]:.1f}%)"
    if "true_label" in r:
        line += f"   true: {r['true_label']} ({'right' if r['true_index'] == r['prediction'] else 'wrong'})"
    top = ", ".join(f"{t['label']} {100 * t['probability']:.1f}%" for t in r["top_k"])
    return f"{line}   top-{len(r['top_k'])}: {top}"


def cmd_predict(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint
    from .prediction import figure_path, predict_files, predict_test_index

    if not args.images and args.test_index is None:
        raise UsageError("give at least one IMAGE, or --test-index N")
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1 (got {args.top_k})")
    checkpoint = load_checkpoint(args.model)
    results = []
    # Errors of single files come back as results; a raised error stops everything.
    if args.test_index is not None:
        name = f"test-{args.test_index}"
        figure = figure_path(args.figure, name, many=bool(args.images)) if args.figure else None
        results.append(predict_test_index(checkpoint, args.test_index, args.data_dir, args.top_k,
                                          args.save_prepared, figure))
    results += predict_files(checkpoint, args.images, top_k=args.top_k, invert=args.invert,
                             save_prepared=args.save_prepared, figure=args.figure)
    for r in results:
        if "error" in r:
            print(f"error: {r['file']}: {r['error']}", file=sys.stderr)
        if args.json:
            print(json.dumps(r))
        elif "error" not in r:
            print(_prediction_line(r))
    return 1 if any("error" in r for r in results) else 0


# ---------------------------------------------------------------------------
# plot

def add_plot(sub) -> None:
    p = sub.add_parser("plot", help="write a run's figures as PNG files",
                       description="Write RUN_DIR/figures/: curves.png (loss and accuracy per epoch), "
                       "confusion.png, misclassified.png (test images) and samples.png (training images).")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--data-dir", type=Path,
                   help="folder holding the four IDX files (default: where the run was trained from)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    from .figures import plot_run

    for path in plot_run(args.run_dir, data_dir=args.data_dir):
        print(path)
    return 0


# ---------------------------------------------------------------------------
# inspect

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
    p.add_argument("--dataset", help="mnist, fashion-mnist, kmnist or synthetic "
                   "(default: mnist, or the checkpoint's dataset)")
    p.add_argument("--data-dir", type=Path, help="folder holding the four IDX files")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspection import format_report, inspect_step

    result = inspect_step(args.model, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                          dataset=args.dataset, data_dir=args.data_dir)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


# ---------------------------------------------------------------------------
# bench

def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time the notebook's pipeline against ours, side by side",
                       description="Train with the course notebook's pipeline (torchvision's MNIST, "
                       "ToTensor, Normalize, DataLoader, or a faithful re-implementation without "
                       "torchvision) and with ours, alternating runs on the same data and device; "
                       "print seconds per epoch, the speed-up and both losses and accuracies.")
    p.add_argument("--recipe", choices=list(RECIPES), default="seed",
                   help="what ours trains (default: seed, the notebook's own recipe); the notebook "
                   "side always runs as the notebook is written")
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default="auto",
                   help="device for both (default: auto)")
    p.add_argument("--epochs", type=_positive(int, "epochs"), default=None,
                   help="epochs per run (default: 1 for seed, else the recipe's own)")
    p.add_argument("--repeats", type=_positive(int, "repeats"), default=3, help="runs of each pipeline (default: 3)")
    p.add_argument("--data-dir", type=Path, help="folder holding the four IDX files (.gz or raw)")
    p.add_argument("--json", action="store_true", help="print one JSON document with every raw timing")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import format_bench, run_bench

    # Progress goes to stderr so that stdout holds only the table or the JSON.
    result = run_bench(args.recipe, device=args.device, epochs=args.epochs, repeats=args.repeats,
                       data_dir=args.data_dir, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
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
        "serve", help="a drawing page and an HTTP API: draw a digit, watch the network think",
        description="Serve a page where you draw (mouse, pen or finger) or drop a picture and see, live, the "
        "class, every class's probability, the 28x28 image the network sees and its hidden layers' "
        "activations; and the HTTP API behind it (POST /api/predict, GET /api/models, /api/models/NAME, "
        "/api/health; described at /openapi.json). Images are prepared exactly as by `mnistlab predict`. "
        "Several models appear as a choice on the page. Ctrl-C stops the server.")
    p.add_argument("models", nargs="+", metavar="RUN_OR_CHECKPOINT", help="run directories or checkpoints")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 opens it to "
                   "the network, without authentication)")
    p.add_argument("--port", type=_port, default=8000, help="TCP port (default: 8000; 0: any free port)")
    p.add_argument("--max-upload", type=_byte_size, default=2 * 1024 ** 2, metavar="SIZE",
                   help="largest request body accepted, e.g. 2M, 500K (default: 2M)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve import serve
    except ModuleNotFoundError as e:
        if e.name not in ("fastapi", "uvicorn", "starlette", "multipart", "python_multipart", "anyio"):
            raise
        raise UsageError(f"mnistlab serve needs {e.name}: pip install 'mnistlab[serve]'") from None
    try:
        serve(args.models, host=args.host, port=args.port, max_upload=args.max_upload, log=print_flush)
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------

def build_parser() -> Parser:
    parser = Parser(prog="mnistlab", description="Train, understand and use small classifiers on "
                    "MNIST-family images.")
    parser.add_argument("--version", action="version", version=f"mnistlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser, required=True)

    p = sub.add_parser("train", help="train a model and write a run directory",
                       description="Train a model. Recipes: " + ", ".join(RECIPES) + ". Flags override "
                       "single values of the recipe.")
    p.add_argument("--recipe", choices=list(RECIPES), default=None,
                   help="named preset (default: default)")
    p.add_argument("--out", type=Path, help="run directory (default: runs/<recipe>-<dataset>[-N])")
    p.add_argument("--data-dir", type=Path, help="folder holding the four IDX files (.gz or raw)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--no-plots", action="store_true", help="do not write figures at the end")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test accuracy, per-class accuracy, confusion matrix")
    p.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT")
    p.add_argument("--data-dir", type=Path, help="folder holding the four IDX files")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps (default: cpu)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("datasets", help="known datasets and where each is found or would be cached")
    p.add_argument("--data-dir", type=Path, help="also look in this folder")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_datasets)

    for add in (add_predict, add_plot, add_inspect, add_bench, add_serve):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except MnistlabError as e:
        print(f"mnistlab {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away: not an error; silence Python's flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
