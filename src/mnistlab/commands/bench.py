"""Benchmark: the course notebook's pipeline and ours, timed side by side in one process.

The notebook feeds its network one PIL image at a time: torchvision's
`datasets.MNIST` builds a PIL image per sample, `ToTensor` and `Normalize` turn
it into a tensor, and a `DataLoader` collates 64 of them into a batch; its loop
reads the loss back with `.item()` after every step. Ours is `training.train`.

`run_bench` runs both for the same recipe, data and device, alternating
(notebook, ours, notebook, ours, ...) so that a change in machine load hits both
alike, and returns every raw timing; `format_bench` renders the table.

When torchvision is importable the notebook side is torchvision itself, reading
the IDX files from a temporary folder in its own layout. Otherwise it is
`PILMNIST`, a re-implementation of the same per-sample path, and the result says
which one ran.

The notebook side always runs the notebook as written (the `seed` recipe:
batch 64, SGD lr 0.003, NLLLoss). With `--recipe seed` both sides train the same
thing from the same initial weights, so their losses should agree up to the
shuffle order. For other recipes the notebook's seconds per epoch are a
reference only: ours trains that recipe (its batch size, schedule, epochs).
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..base import data as data_mod
from ..base.config import RECIPES, recipe
from ..base.devices import select_device, synchronize
from ..base.models import step_flops
from ..base.threads import choose_threads, load_average, plural_threads
from ..core.evaluation import accuracy
from ..core import batched
from ..core.engine import timed_epoch, train
from ..core.runs import time_to_target
from ..core.training import build, load_splits

NOTEBOOK = RECIPES["seed"]  # the notebook's hyper-parameters: batch 64, SGD lr 0.003, NLLLoss
TARGET_ACCURACY = 0.98  # "time to 98%": training seconds until the first epoch at or above this
WARMUP_BATCHES = 10  # untimed batches per pipeline before the first timed run (allocators, kernels)
# Slowest over fastest epoch of one side above which the table warns that the machine's speed
# changed during the benchmark (seen on shared virtual machines: the same run at 0.6 or 1.2 s/epoch).
UNSTEADY_RATIO = 1.25

PIPELINE_TORCHVISION = "torchvision"
PIPELINE_PIL = "pil"


# ---------------------------------------------------------------------------
# The notebook's per-sample data path, without torchvision
#
# Step for step what torchvision 0.29 runs per sample (checks included), so
# that the notebook's seconds are the notebook's: a leaner version would
# understate the speed-up (benchmarks/README.md has the measurement).

def to_tensor(pic) -> torch.Tensor:
    """torchvision's `ToTensor` for an 8-bit PIL image: (H, W) bytes -> (C, H, W) float in [0, 1]."""
    img = torch.from_numpy(np.array(pic, np.uint8, copy=True))
    img = img.view(pic.size[1], pic.size[0], len(pic.getbands()))
    img = img.permute((2, 0, 1)).contiguous()
    return img.to(dtype=torch.get_default_dtype()).div(255)


def normalize(tensor: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """torchvision's `Normalize`: (x - mean) / std per channel, on a copy, refusing a zero std."""
    tensor = tensor.clone()
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype, device=tensor.device)
    std_t = torch.as_tensor(std, dtype=tensor.dtype, device=tensor.device)
    if (std_t == 0).any():
        raise ValueError("std evaluated to zero, leading to division by zero")
    return tensor.sub_(mean_t.view(-1, 1, 1)).div_(std_t.view(-1, 1, 1))


class Normalize(nn.Module):
    """torchvision's `transforms.Normalize`, a module like it."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return normalize(tensor, self.mean, self.std)


def notebook_transform(mean: float, std: float) -> Callable:
    """`Compose([ToTensor(), Normalize((mean,), (std,))])`."""
    steps = [to_tensor, Normalize((mean,), (std,))]

    def transform(pic):
        for step in steps:
            pic = step(pic)
        return pic

    return transform


class PILMNIST(torch.utils.data.Dataset):
    """`torchvision.datasets.MNIST` after loading: a PIL image per sample, then the transform."""

    def __init__(self, split: data_mod.Split, transform: Callable | None = None):
        self.data, self.targets = split.images, split.labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        img, target = self.data[index], int(self.targets[index])
        pixels = img.numpy()
        # torchvision's `_Image_fromarray` for Pillow >= 11.3: a mode-"L" image over the bytes.
        img = Image.frombuffer("L", (pixels.shape[1], pixels.shape[0]), pixels, "raw", "L", 0, 1)
        if self.transform is not None:
            img = self.transform(img)
        return img, target


def notebook_dataset(dataset: data_mod.Dataset, root: Path, mean: float,
                     std: float) -> tuple[torch.utils.data.Dataset, str, str]:
    """The notebook's training set, the pipeline's name, and a description for people.

    torchvision reads uncompressed IDX files from `<root>/<Name>/raw/`, so the
    splits already loaded are written there (any source works, .gz or not).
    """
    try:
        import torchvision
        from torchvision import transforms
    except ImportError:
        return (PILMNIST(dataset.train, notebook_transform(mean, std)), PIPELINE_PIL,
                "re-implementation of torchvision's per-sample PIL path (torchvision is not "
                "installed): PIL image -> ToTensor -> Normalize, DataLoader(batch 64, shuffle)")
    spec = dataset.spec
    raw = root / spec.torchvision_name / "raw"
    splits = {"train": dataset.train, "test": dataset.test}
    for role, (fname, _) in spec.files.items():
        split, kind = role.split("_")
        tensor = splits[split].images if kind == "images" else splits[split].labels.to(torch.uint8)
        data_mod.write_idx(raw / fname.removesuffix(".gz"), tensor.numpy(), compress=False)
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    train_set = getattr(torchvision.datasets, spec.torchvision_name)(
        root=str(root), train=True, transform=transform, download=False)
    return (train_set, PIPELINE_TORCHVISION,
            f"torchvision {torchvision.__version__} datasets.{spec.torchvision_name} + ToTensor + "
            "Normalize, DataLoader(batch 64, shuffle)")


# ---------------------------------------------------------------------------
# The notebook's network and loop, as the notebook writes them

def notebook_model(input_size: int, hidden: tuple[int, ...], num_classes: int) -> nn.Sequential:
    """Linear(784,128) ReLU Linear(128,64) ReLU Linear(64,10) LogSoftmax(dim=1).

    Built after the same `torch.manual_seed` it gets the same initial weights as
    our MLP (ours has a Flatten in front, which holds no parameters).
    """
    sizes = [input_size, *hidden]
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(sizes[-1], num_classes), nn.LogSoftmax(dim=1))


def notebook_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, criterion: nn.Module,
                   trainloader: DataLoader, device: torch.device) -> float:
    """One epoch of the notebook's loop; returns the mean batch loss as it prints it."""
    running_loss = 0.0
    for images, labels in trainloader:
        images, labels = images.to(device), labels.to(device)
        images = images.view(images.shape[0], -1)
        optimizer.zero_grad()
        output = model(images)
        loss = criterion(output, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    return running_loss / len(trainloader)


def run_notebook(train_set: torch.utils.data.Dataset, x_test: torch.Tensor, y_test: torch.Tensor,
                 num_classes: int, epochs: int, seed: int, device: torch.device) -> dict[str, Any]:
    """Train the notebook's model from `torch.manual_seed(seed)`; seconds, losses, test accuracy."""
    torch.manual_seed(seed)
    model = notebook_model(x_test.shape[1], NOTEBOOK.hidden, num_classes).to(device)
    criterion = nn.NLLLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=NOTEBOOK.lr)
    trainloader = DataLoader(train_set, batch_size=NOTEBOOK.batch_size, shuffle=True)
    seconds, losses = [], []
    for _ in range(epochs):
        synchronize(device)
        t0 = time.perf_counter()
        losses.append(notebook_epoch(model, optimizer, criterion, trainloader, device))
        synchronize(device)
        seconds.append(time.perf_counter() - t0)
    return {"epoch_seconds": seconds, "train_loss": losses,
            "test_accuracy": float(accuracy(model, x_test, y_test))}


# ---------------------------------------------------------------------------
# Ours

def run_ours(config, out: Path, data_dir: str | os.PathLike | None) -> dict[str, Any]:
    """`training.train` once; its per-epoch seconds, losses and accuracies."""
    result = train(config, out=out, data_dir=data_dir)
    rows = result.rows
    return {"epoch_seconds": [r["seconds"] for r in rows], "train_loss": [r["train_loss"] for r in rows],
            "test_accuracy": rows[-1]["test_accuracy"],
            "epoch_test_accuracy": [r["test_accuracy"] for r in rows],
            "train_seconds": result.summary["train_seconds"],
            "time_to_target": time_to_target(rows, TARGET_ACCURACY)}


# ---------------------------------------------------------------------------
# Both, alternating

def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def unsteady(sides: dict[str, dict[str, Any]]) -> list[str]:
    """The sides whose epochs varied by more than UNSTEADY_RATIO (slowest / fastest)."""
    return [name for name, side in sides.items()
            if side["seconds_per_epoch"]["max"] > UNSTEADY_RATIO * side["seconds_per_epoch"]["min"]]


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Seconds per epoch over every epoch of every run; losses and accuracy of the last run
    (every run starts from the same seed, so they differ only by float non-determinism)."""
    return {"runs": runs, "seconds_per_epoch": spread([s for r in runs for s in r["epoch_seconds"]]),
            "final_train_loss": runs[-1]["train_loss"][-1], "test_accuracy": runs[-1]["test_accuracy"]}


def run_bench(recipe_name: str = "seed", device: str = "auto", epochs: int | None = None,
              repeats: int = 3, data_dir: str | os.PathLike | None = None,
              log: Callable[[str], None] = lambda line: None, threads: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Time the notebook's pipeline and ours, alternating `repeats` runs of each.

    `epochs` per run defaults to 1 for `seed` (seconds per epoch) and to the
    recipe's own for the others (their schedules and the time to 98% need all of
    them); the notebook side runs 1 epoch then, as a reference.

    Ours runs with each count of `threads` in turn within each repeat (default:
    the count base/threads.py chooses for the recipe's step); the notebook with
    the first, so that the speed-up compares pipelines, not thread counts.
    "ours" in the result is the first count's; "ours_by_threads" holds every
    count's.
    """
    if (epochs is not None and epochs < 1) or repeats < 1:
        raise ValueError("epochs and repeats must be at least 1")
    comparable = recipe_name == NOTEBOOK.recipe
    base = recipe(recipe_name, device=device)
    epochs = epochs or (1 if comparable else base.epochs)
    # Test accuracy after every epoch, for the time to 98%; eval time is not in `seconds`.
    config = base.replace(epochs=epochs, eval_every_epoch=True)
    notebook_epochs = epochs if comparable else 1
    torch_device = select_device(device)
    dataset = data_mod.load(config.dataset, data_dir)
    x_test, y_test = data_mod.to_device(dataset.test, torch_device, NOTEBOOK.mean, NOTEBOOK.std)
    x_test = x_test.flatten(1)  # the notebook's network takes flat images
    inherited = torch.get_num_threads()  # what torch started with, put back at the end
    chosen = choose_threads(None, step_flops(config.model, config.hidden, config.batch_size)).threads
    counts = tuple(threads) if threads else (chosen,)
    log(f"bench: recipe {recipe_name}, {dataset.spec.name} from {dataset.source}, device {torch_device}, "
        f"{' then '.join(plural_threads(n) for n in counts)} (the notebook's pipeline: {plural_threads(counts[0])})")

    with tempfile.TemporaryDirectory(prefix="mnistlab-bench-") as tmp:
        tmp_path = Path(tmp)
        train_set, pipeline, description = notebook_dataset(dataset, tmp_path / "notebook-data",
                                                            NOTEBOOK.mean, NOTEBOOK.std)
        log(f"notebook pipeline: {description}")
        # Untimed warm-up of both: first-call costs (allocator, kernel selection, parsed cache).
        warm = min(len(train_set), WARMUP_BATCHES * NOTEBOOK.batch_size)
        run_notebook(Subset(train_set, range(warm)), x_test, y_test, len(dataset.classes), 1,
                     config.seed, torch_device)
        warm = min(len(dataset.train), WARMUP_BATCHES * config.batch_size)
        run_ours(config.replace(epochs=1, train_size=warm, drop_last=False), tmp_path / "warmup", data_dir)

        notebook_runs, our_runs = [], {n: [] for n in counts}
        try:
            for r in range(1, repeats + 1):
                torch.set_num_threads(counts[0])
                run = run_notebook(train_set, x_test, y_test, len(dataset.classes), notebook_epochs,
                                   config.seed, torch_device)
                notebook_runs.append(run)
                log(f"notebook run {r}/{repeats}: {_fmt_seconds(run['epoch_seconds'])} s/epoch, "
                    f"loss {run['train_loss'][-1]:.4f}")
                for n in counts:
                    torch.set_num_threads(n)
                    run = run_ours(config, tmp_path / f"ours-{r}-{n}", data_dir)
                    run["threads"] = torch.get_num_threads()
                    our_runs[n].append(run)
                    log(f"ours run {r}/{repeats}, {plural_threads(n)}: {_fmt_seconds(run['epoch_seconds'])} "
                        f"s/epoch, loss {run['train_loss'][-1]:.4f}")
        finally:
            torch.set_num_threads(inherited)

    notebook = {"pipeline": pipeline, "description": description, "recipe": NOTEBOOK.recipe,
                "epochs": notebook_epochs, "batch_size": NOTEBOOK.batch_size, "lr": NOTEBOOK.lr,
                "threads": counts[0], **summarize(notebook_runs)}

    def side(runs: list[dict[str, Any]], n: int) -> dict[str, Any]:
        times_to_target = [r["time_to_target"] for r in runs]
        reached = all(t is not None for t in times_to_target)
        return {"recipe": recipe_name, "epochs": epochs, "batch_size": config.batch_size,
                "threads": n, **summarize(runs),
                "train_seconds": spread([r["train_seconds"] for r in runs]),
                "reached_target": reached,
                "time_to_target": spread(times_to_target) if reached else None}

    by_threads = [side(our_runs[n], n) for n in counts]
    ours = by_threads[0]
    return {
        "recipe": recipe_name, "dataset": dataset.spec.name, "data_source": dataset.source,
        "epochs": epochs, "repeats": repeats, "comparable": comparable, "target_accuracy": TARGET_ACCURACY,
        "machine": {"device": str(torch_device), "torch": torch.__version__, "threads": inherited,
                    "cpu": cpu_model(), "load": load_average(),
                    "gpu": torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else None},
        "notebook": notebook,
        "ours": ours,
        "ours_by_threads": by_threads,
        "speedup": notebook["seconds_per_epoch"]["median"] / ours["seconds_per_epoch"]["median"],
        "unsteady": unsteady({"notebook": notebook, **({"ours": ours} if len(by_threads) == 1 else
                                                       {_ours_name(s): s for s in by_threads})}),
    }


def _ours_name(side: dict[str, Any]) -> str:
    return f"ours, {plural_threads(side['threads'])}"


def _shown_load(result: dict[str, Any]) -> str:
    load = result["machine"].get("load")
    return "unknown" if load is None else f"{load:.1f}"


def _fmt_seconds(values: list[float]) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------------------
# For people

def format_bench(result: dict[str, Any]) -> str:
    """The result as a table, the speed-up, and the parity of losses and accuracies."""
    m, nb, ours = result["machine"], result["notebook"], result["ours"]
    gpu = f" ({m['gpu']})" if m["gpu"] else ""
    lines = [
        f"mnistlab bench: recipe {result['recipe']} on {result['dataset']}, "
        f"{_plural(result['repeats'], 'repeat')} of each pipeline, alternating",
        f"machine: device {m['device']}{gpu}, torch {m['torch']} (starts with {plural_threads(m['threads'])}), "
        f"CPU {m['cpu']}, load {_shown_load(result)}",
        f"notebook pipeline: {nb['description']}",
        "",
    ]
    rows = [("pipeline", "s/epoch (median)", "spread (min-max)", "final train loss", "test accuracy")]
    sides = [(f"notebook ({nb['recipe']}, {_plural(nb['epochs'], 'epoch')}, {plural_threads(nb['threads'])})", nb)]
    sides += [(f"ours ({s['recipe']}, {_plural(s['epochs'], 'epoch')}, {plural_threads(s['threads'])})", s)
              for s in result.get("ours_by_threads", [ours])]
    for name, side in sides:
        s = side["seconds_per_epoch"]
        rows.append((name, f"{s['median']:.3f}", f"{s['min']:.3f}-{s['max']:.3f}",
                     f"{side['final_train_loss']:.4f}", f"{100 * side['test_accuracy']:.2f}%"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    named = {"notebook": nb, "ours": ours, **{_ours_name(s): s for s in result.get("ours_by_threads", [])}}
    for name in result["unsteady"]:
        s = named[name]["seconds_per_epoch"]
        lines.append(f"unsteady ({name}): epochs took {s['min']:.3f}-{s['max']:.3f} s "
                     f"({s['max'] / s['min']:.2f}x apart): the machine's speed changed during the benchmark; "
                     "rerun on a quiet machine or with more --repeats before trusting the ratio")
    lines.append("")
    lines.append(f"speed-up: {result['speedup']:.1f}x seconds per epoch (notebook median / ours median)"
                 + ("" if result["comparable"] else "; different recipes, the notebook is a reference"))
    compared = result.get("ours_by_threads", [])
    if len(compared) > 1:
        best = min(compared, key=lambda s: s["seconds_per_epoch"]["median"])
        lines.append("threads: " + ", ".join(
            f"{plural_threads(s['threads'])} {s['seconds_per_epoch']['median'] / best['seconds_per_epoch']['median']:.2f}x"
            for s in compared) + f" the fastest's seconds per epoch (median; machine load {_shown_load(result)})")
    if result["comparable"]:
        lines.append(f"parity: final train loss {nb['final_train_loss']:.4f} vs {ours['final_train_loss']:.4f} "
                     f"(difference {abs(nb['final_train_loss'] - ours['final_train_loss']):.4f}; same initial "
                     f"weights, different shuffles), test accuracy {100 * nb['test_accuracy']:.2f}% vs "
                     f"{100 * ours['test_accuracy']:.2f}%")
    else:
        target = f"{100 * result['target_accuracy']:.0f}%"
        reach = (f"reached {target} after {ours['time_to_target']['median']:.2f} s of training (median; "
                 "eval time not counted)" if ours["reached_target"]
                 else f"did not reach {target} test accuracy in every run")
        lines.append(f"ours: {ours['train_seconds']['median']:.2f} s of training (median), test accuracy "
                     f"{100 * ours['test_accuracy']:.2f}%, {reach}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Many networks: batched against one after another (`mnistlab bench --sweep`)

def sweep_members(device: torch.device) -> tuple[int, ...]:
    """The numbers of networks timed batched: 1, 8, 64, and 512 on a GPU."""
    return (1, 8, 64, 512) if device.type == "cuda" else (1, 8, 64)


def run_sweep_bench(recipe_name: str = "seed", device: str = "auto", members: tuple[int, ...] | None = None,
                    sequential: int = 2, repeats: int = 1, data_dir: str | os.PathLike | None = None,
                    log: Callable[[str], None] = lambda line: None, threads: int | None = None) -> dict[str, Any]:
    """Seconds per epoch of K networks trained batched (batched.py) and of networks trained one after
    another (training.train_epoch), on the same data, device and recipe, in one process.

    One after another, each network costs the same whatever K, so `sequential`
    networks are timed and their rate stands for any K. Each repeat times the
    sequential networks, then every K, so that a change in load hits both.
    Each side computes with `threads`, or by default with the count
    base/threads.py chooses for its own step (one network's, or K networks').
    """
    if repeats < 1 or sequential < 1 or (members is not None and (not members or min(members) < 1)):
        raise ValueError("repeats, sequential and every member count must be at least 1")
    torch_device = select_device(device)
    members = tuple(members or sweep_members(torch_device))
    base = recipe(recipe_name, device=device, epochs=1, val_size=0, cuda_graph=False)
    splits = load_splits(base, data_dir, torch_device)
    inherited = torch.get_num_threads()
    counts = {k: threads or choose_threads(None, step_flops(base.model, base.hidden, base.batch_size, k)).threads
              for k in {1, *members}}
    log(f"bench --sweep: recipe {recipe_name}, {splits.dataset.spec.name}, device {torch_device}, threads "
        + ", ".join(f"{plural_threads(counts[k])} for {_plural(k, 'network')}" for k in sorted(counts))
        + f"; K = {', '.join(map(str, members))}")

    def one_after_another() -> float:
        torch.set_num_threads(counts[1])
        seconds = 0.0
        for seed in range(sequential):
            _, spent = timed_epoch(build(base.replace(seed=seed), splits, torch_device), torch_device)
            seconds += spent
        return seconds / sequential

    def batched_epoch(k: int, limit: int | None = None) -> float:
        torch.set_num_threads(counts[k])
        configs = [base.replace(seed=seed, data_seed=0) for seed in range(k)]
        group = batched.build_group(configs, splits, torch_device)
        if limit is not None:  # a warm-up on the first batches only
            group.batches = type(group.batches)(splits.x[:limit * base.batch_size], splits.y[:limit * base.batch_size],
                                                base.batch_size, base.shift, base.drop_last)
        group.begin_epoch(1, [True] * k)
        _, spent = timed_epoch(group, torch_device)
        return spent

    single_seconds, batched_seconds = [], {k: [] for k in members}
    try:
        for k in members:  # untimed: first-call costs (allocator, kernel selection, vmap's tracing)
            batched_epoch(k, limit=WARMUP_BATCHES)
        for r in range(1, repeats + 1):
            single_seconds.append(one_after_another())
            log(f"repeat {r}/{repeats}: one network {single_seconds[-1]:.3f} s/epoch")
            for k in members:
                batched_seconds[k].append(batched_epoch(k))
                log(f"repeat {r}/{repeats}: {k} networks batched {batched_seconds[k][-1]:.3f} s/epoch")
    finally:
        torch.set_num_threads(inherited)
    single = statistics.median(single_seconds)
    rows = []
    for k in members:
        seconds = statistics.median(batched_seconds[k])
        # Each repeat's ratio compares two measurements taken side by side, under the same load.
        ratios = [k * one / many for one, many in zip(single_seconds, batched_seconds[k])]
        rows.append({"networks": k, "threads": counts[k], "batched_seconds_per_epoch": seconds,
                     "batched_seconds": batched_seconds[k],
                     "batched_networks_per_second": k / seconds,
                     "one_after_another_seconds_per_epoch": k * single,
                     "one_after_another_networks_per_second": 1 / single,
                     "ratios": ratios, "ratio": statistics.median(ratios)})
    return {"recipe": recipe_name, "dataset": splits.dataset.spec.name, "repeats": repeats,
            "sequential_networks": sequential, "single_seconds": single_seconds, "single_threads": counts[1],
            "machine": {"device": str(torch_device), "torch": torch.__version__, "threads": inherited,
                        "cpu": cpu_model(), "load": load_average(),
                        "gpu": torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else None},
            "rows": rows}


def format_sweep_bench(result: dict[str, Any]) -> str:
    """Networks per second (one epoch each), batched against one after another, per K; the ratio is the
    median of each repeat's ratio, whose two sides were measured one after the other."""
    m = result["machine"]
    gpu = f" ({m['gpu']})" if m["gpu"] else ""
    lines = [f"mnistlab bench --sweep: recipe {result['recipe']} on {result['dataset']}, one epoch per network, "
             f"median of {_plural(result['repeats'], 'repeat')}",
             f"machine: device {m['device']}{gpu}, torch {m['torch']}, CPU {m['cpu']}, load {_shown_load(result)}",
             f"one after another: {_plural(result['sequential_networks'], 'network')} timed per repeat, "
             f"{plural_threads(result['single_threads'])}; the rate does not depend on K", ""]
    table = [("networks", "threads", "batched s/epoch", "batched networks/s", "one after another networks/s",
              "batched / one after another (median of repeats: each)")]
    for row in result["rows"]:
        each = ", ".join(f"{r:.2f}" for r in row["ratios"])
        table.append((str(row["networks"]), str(row["threads"]), f"{row['batched_seconds_per_epoch']:.3f}",
                      f"{row['batched_networks_per_second']:.2f}", f"{row['one_after_another_networks_per_second']:.2f}",
                      f"{row['ratio']:.2f}x" + (f" ({each})" if len(row["ratios"]) > 1 else "")))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    return "\n".join(lines)
