"""Figures: the notebook's `view_classify`, and a run's curves, confusion matrix and image grids.

Every figure is a `matplotlib.figure.Figure` drawn on an Agg canvas, never a
pyplot window, so nothing here needs a display and no global state is kept.
Builders take plain arrays and return a Figure; `plot_run` reads a run
directory and writes the PNGs into `<run>/figures/`.

Images are drawn with `INK`: high values (the ink of a digit, the bright
garment of Fashion-MNIST) are dark, the background is white, like pen on paper.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from ..base import data as data_mod
from ..base.data import DATASETS
from ..base.errors import RunError
from ..base.files import atomic_path
from ..core.checkpoint import load_checkpoint
from ..core.evaluation import evaluate_model, predictions
from ..core.runs import committed_rows, is_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 120  # pixels per inch of every saved PNG
INK = "gray_r"  # high pixel values dark on white
CELL = 1.0  # inches per image in a grid (120 px at DPI)
LINE = 0.2  # inches per line of text above a grid image
MAX_MISCLASSIFIED = 36
SAMPLES_PER_CLASS = 4
MAX_COLUMNS = 12  # classes side by side in the samples figure; more wrap, one image each
MAX_NUMBERED = 20  # classes whose confusion-matrix cells show their counts; beyond, colour alone
FIGURE_NAMES = ("curves.png", "confusion.png", "misclassified.png", "samples.png")


# ---------------------------------------------------------------------------
# Plumbing: figures without pyplot, written atomically

def new_figure(width: float, height: float, managed: bool = False) -> "Figure":
    """A constrained-layout Figure of `width` x `height` inches on an Agg canvas.

    `managed` makes it a pyplot figure instead, so that an interactive session shows it.
    """
    if managed:
        import matplotlib.pyplot as plt

        return plt.figure(figsize=(width, height), layout="constrained")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: "Figure", path: str | os.PathLike) -> Path:
    """Write `fig` as a PNG of exactly its size x DPI pixels; readers never see half a file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _numpy(x: Any) -> np.ndarray:
    """A float numpy copy of a tensor (any device, with or without grad), array or image."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _pyplot_window() -> bool:
    """True when the user already drives pyplot with a GUI backend (e.g. plt.ion() in a terminal).

    In Jupyter (inline backend) a returned Figure displays itself as the cell's
    output, so it is not registered with pyplot, which would show it twice.
    """
    if "matplotlib.pyplot" not in sys.modules:
        return False
    import matplotlib

    try:
        from matplotlib.backends import BackendFilter, backend_registry

        windowed = backend_registry.list_builtin(BackendFilter.INTERACTIVE)
    except ImportError:  # matplotlib < 3.9
        from matplotlib.rcsetup import interactive_bk as windowed
    return matplotlib.get_backend().lower() in {name.lower() for name in windowed}


# ---------------------------------------------------------------------------
# One image and its class probabilities (the notebook's last cell)

def view_classify(img: Any, ps: Any, classes: Sequence[str] | None = None, title: str | None = None,
                  version: str | None = None) -> "Figure":
    """Draw a 28x28 image beside a horizontal bar chart of its class probabilities.

    The course helper's call shape: `view_classify(img.view(1, 28, 28), ps)` with
    `ps = torch.exp(log_probabilities)`, shape (1, C) or (C,). `img` may be any
    784-element tensor or array (raw pixels or normalised). `classes` names the
    bars (default '0', '1', ...); the helper's `version="Fashion"` also works.
    Returns the Figure: Jupyter shows it as the cell's output, a pyplot GUI
    session shows it in a window, a script can `fig.savefig(...)`.
    """
    if classes is None and version is not None and version.lower() == "fashion":
        classes = DATASETS["fashion-mnist"].classes
    fig = new_figure(6.5, 3.0, managed=_pyplot_window())
    draw_classify(fig, img, ps, classes, title)
    return fig


def save_prediction_figure(img28: Any, probs: Any, classes: Sequence[str], path: str | os.PathLike,
                           title: str | None = None) -> Path:
    """`view_classify` written to `path` as a PNG (for `mnistlab predict --figure`)."""
    fig = new_figure(6.5, 3.0)
    draw_classify(fig, img28, probs, classes, title)
    return save_png(fig, path)


def draw_classify(fig: "Figure", img: Any, ps: Any, classes: Sequence[str] | None, title: str | None) -> None:
    image, probs = _numpy(img), _numpy(ps).reshape(-1)
    side = math.isqrt(image.size)
    if side * side != image.size:
        raise ValueError(f"view_classify: img must be a square image such as 28x28, got shape {image.shape}")
    if probs.size and not (probs.min() >= 0 and probs.max() <= 1 + 1e-6):
        raise ValueError("view_classify: ps must be probabilities in [0, 1]; pass torch.exp(log_probabilities) "
                         "or softmax(logits)")
    classes = [str(c) for c in classes] if classes is not None else [str(k) for k in range(probs.size)]
    if len(classes) != probs.size:
        raise ValueError(f"view_classify: {probs.size} probabilities but {len(classes)} class names")

    ax_img, ax_bar = fig.subplots(1, 2, width_ratios=(1, 1.2))
    ax_img.imshow(image.reshape(side, side), cmap=INK, interpolation="nearest")
    ax_img.set_axis_off()
    best = int(probs.argmax())
    ax_img.set_title(title if title is not None else f"predicted: {classes[best]} ({100 * probs[best]:.1f}%)")

    rows = np.arange(probs.size)
    colors = ["tab:blue"] * probs.size
    colors[best] = "tab:orange"
    ax_bar.barh(rows, probs, color=colors)
    ax_bar.set_yticks(rows, labels=classes)
    ax_bar.invert_yaxis()  # first class on top, read like a list
    ax_bar.set_xlim(0, 1.1)
    ax_bar.set_xlabel("probability")
    ax_bar.set_title("Class Probability")


# ---------------------------------------------------------------------------
# A run's figures

def curves_figure(rows: list[dict[str, Any]], title: str = "") -> "Figure":
    """Training loss per epoch (left) and validation/test accuracy per epoch (right)."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in rows]
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], "o-", color="tab:blue", label="train loss")
    ax_loss.set(title="Training loss", xlabel="epoch", ylabel="mean loss per batch")
    for column, label, color in (("val_accuracy", "validation", "tab:green"), ("test_accuracy", "test", "tab:orange")):
        points = [(r["epoch"], 100 * r[column]) for r in rows if r.get(column) is not None]
        if points:
            x, y = zip(*points)
            ax_acc.plot(x, y, "o-", color=color, label=f"{label} ({y[-1]:.2f}% at epoch {x[-1]})")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    if ax_acc.lines:
        ax_acc.legend(loc="lower right")
    else:
        ax_acc.text(0.5, 0.5, "no accuracy recorded", ha="center", va="center", transform=ax_acc.transAxes)
    last = max(epochs, default=1)
    for ax in (ax_loss, ax_acc):
        # Whole epochs only: a one-epoch run gets the tick 1, not 0.95 ... 1.05.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(0.5, last + 0.5)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def confusion_figure(confusion: Any, classes: Sequence[str], title: str = "") -> "Figure":
    """Counts of (true, predicted) pairs; colour on a square-root scale so that errors show."""
    from matplotlib.colors import PowerNorm

    counts = np.asarray(confusion, dtype=np.int64)
    n = len(classes)
    # 10 classes fit 6.5 inches; more classes get more room, and past MAX_NUMBERED their cells only a colour
    grow = max(0.0, 0.3 * (n - 10))
    fig = new_figure(7.5 + grow, 6.5 + grow)
    ax = fig.subplots()
    shown = ax.imshow(counts, cmap="Blues", norm=PowerNorm(0.5, vmin=0, vmax=max(1, counts.max())))
    fig.colorbar(shown, ax=ax, shrink=0.8, label="images")
    dark = 0.5 * counts.max()
    for (i, j), v in np.ndenumerate(counts) if n <= MAX_NUMBERED else ():
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8 if v < 1000 else 7,
                color="white" if v > dark else ("0.7" if v == 0 else "black"))
    long_names = max(len(c) for c in classes) > 2
    ax.set_xticks(range(n), labels=classes, rotation=45 if long_names else 0, ha="right" if long_names else "center")
    ax.set_yticks(range(n), labels=classes)
    ax.set(xlabel="predicted", ylabel="true")
    total, correct = counts.sum(), np.trace(counts)
    ax.set_title(title or f"Confusion matrix: {correct}/{total} correct ({100 * correct / max(1, total):.2f}%)")
    return fig


def image_grid(images: Sequence[Any], titles: Sequence[str], ncols: int, title: str = "") -> "Figure":
    """Images (uint8 28x28, or None for an empty cell) in rows of `ncols`, each with its title."""
    nrows = max(1, math.ceil(len(images) / ncols))
    lines = max((t.count("\n") + 1 for t in titles), default=1)
    fig = new_figure(ncols * CELL, nrows * (CELL + lines * LINE) + (0.4 if title else 0))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < len(images) and images[k] is not None:
            ax.imshow(_numpy(images[k]), cmap=INK, vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(titles[k], fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def misclassified_figure(images: Any, true: Sequence[int], pred: Sequence[int], classes: Sequence[str],
                         total: int | None = None) -> "Figure":
    """The first MAX_MISCLASSIFIED wrong images titled 'true X / pred Y'; `total` counts all of them."""
    total = len(true) if total is None else total
    shown = min(len(true), MAX_MISCLASSIFIED)
    sep = " / " if max(len(c) for c in classes) <= 2 else "\n"
    titles = [f"true {classes[t]}{sep}pred {classes[p]}" for t, p in zip(true[:shown], pred[:shown])]
    if shown == 0:
        fig = new_figure(6, 1.5)
        fig.text(0.5, 0.5, "No misclassified test images", ha="center", va="center", fontsize=14)
        return fig
    return image_grid(list(images[:shown]), titles, ncols=min(6, shown),
                      title=f"Misclassified test images: {shown} of {total}")


def samples_figure(images: Any, labels: Any, classes: Sequence[str], per_class: int = SAMPLES_PER_CLASS,
                   name: str = "") -> "Figure":
    """The first `per_class` training images of each class: one column per class (or, past MAX_COLUMNS
    classes, the first image of each class in rows of MAX_COLUMNS)."""
    labels = np.asarray(labels)
    title = f"Training samples{': ' + name if name else ''}"
    if len(classes) > MAX_COLUMNS:  # one image per class, in rows of MAX_COLUMNS (EMNIST balanced has 47)
        firsts = [np.flatnonzero(labels == k)[:1] for k in range(len(classes))]
        return image_grid([images[idx[0]] if len(idx) else None for idx in firsts], list(classes),
                          ncols=MAX_COLUMNS, title=title)
    firsts = [np.flatnonzero(labels == k)[:per_class] for k in range(len(classes))]
    cells, titles = [], []
    for row in range(per_class):
        for k, idx in enumerate(firsts):
            cells.append(images[idx[row]] if row < len(idx) else None)
            titles.append(classes[k])
    return image_grid(cells, titles, ncols=len(classes), title=title)


def plot_run(run_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None,
             any_data: bool = False) -> list[Path]:
    """Write curves, confusion, misclassified and samples PNGs into `run_dir/figures/`.

    The test split is evaluated with the run's checkpoint; without `data_dir` the
    data is looked for where the run was trained from, then in the usual places.
    Data recognised as another dataset than the run's is a DataError, unless `any_data`.
    """
    run_dir = Path(run_dir)
    ckpt = load_checkpoint(run_dir)
    if not is_run(run_dir):
        raise RunError(f"{run_dir}: not a run directory (no config.json, state.pt or model.json)")
    dataset = ckpt.load_data(data_dir, any_data)
    x, y = data_mod.to_device(dataset.test, torch.device("cpu"), ckpt.mean, ckpt.std)
    result = evaluate_model(ckpt.model, x, y, ckpt.classes)
    wrong = result.misclassified[:MAX_MISCLASSIFIED]
    pred = predictions(ckpt.model, x[wrong]).tolist() if wrong else []

    recipe = ckpt.meta.get("config", {}).get("recipe", "")
    name = f"{dataset.spec.name}, recipe {recipe}" if recipe else dataset.spec.name
    figures = (
        curves_figure(committed_rows(run_dir), title=f"{run_dir.name} ({name})"),
        confusion_figure(result.confusion, ckpt.classes),
        misclassified_figure(dataset.test.images[wrong], y[wrong].tolist(), pred, ckpt.classes,
                             total=len(result.misclassified)),
        samples_figure(dataset.train.images, dataset.train.labels, ckpt.classes, name=dataset.spec.name),
    )
    return [save_png(fig, run_dir / "figures" / fname) for fig, fname in zip(figures, FIGURE_NAMES)]


# ---------------------------------------------------------------------------
# A sweep

def _sort_key(text: str) -> tuple:
    """Numbers in numeric order, sizes such as 128x64 by their numbers, anything else by its text."""
    try:
        return (0, tuple(float(part) for part in text.split("x")), text)
    except ValueError:
        return (1, (), text)


def sweep_figure(runs: Sequence[dict[str, Any]], swept: Sequence[str], metric: str = "val_accuracy") -> "Figure":
    """One panel per swept field: `metric` (%) against the field's values, one line per combination of
    the other swept fields, each point the mean over seeds with an error bar of one standard deviation
    and the single runs as dots. Runs that did not finish are left out."""
    fields = list(swept) or ["(all)"]
    fig = new_figure(4.5 * len(fields), 3.8)
    axes = fig.subplots(1, len(fields), squeeze=False)[0]
    done = [r for r in runs if r.get("state") == "finished" and r.get(metric) is not None]
    label = "validation accuracy (%)" if metric == "val_accuracy" else "test accuracy (%)"
    for ax, field in zip(axes, fields):
        values = sorted({str(r.get(field, "all")) for r in done}, key=_sort_key)
        others = [f for f in swept if f != field]
        series: dict[tuple, list[dict[str, Any]]] = {}
        for r in done:
            series.setdefault(tuple(r[f] for f in others), []).append(r)
        for key, members in sorted(series.items(), key=lambda kv: tuple(_sort_key(v) for v in kv[0])):
            xs, means, stds = [], [], []
            for i, v in enumerate(values):
                ys = [100 * r[metric] for r in members if str(r.get(field, "all")) == v]
                if not ys:
                    continue
                ax.plot([i] * len(ys), ys, ".", color="0.6", markersize=4)
                xs.append(i)
                means.append(float(np.mean(ys)))
                stds.append(float(np.std(ys, ddof=1)) if len(ys) > 1 else 0.0)
            name = ", ".join(f"{f}={v}" for f, v in zip(others, key)) or None
            ax.errorbar(xs, means, yerr=stds, fmt="o-", capsize=3, label=name)
        ax.set_xticks(range(len(values)), labels=values, rotation=30 if max(map(len, values), default=0) > 6 else 0)
        ax.set(xlabel=field, ylabel=label, title=f"{label.split(' (')[0]} against {field}")
        ax.grid(alpha=0.3)
        if others and len(series) <= 8:
            ax.legend(fontsize=8)
    if not done:
        fig.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", fontsize=14)
    return fig


# ---------------------------------------------------------------------------
# The ladder

def ladder_figure(rows: Sequence[dict[str, Any]], targets: Sequence[float] = (), title: str = "") -> "Figure":
    """Test accuracy against training seconds (log axis), one labelled point per step of a ladder, joined in
    step order; error bars of one standard deviation over the seeds; a dashed line at each target accuracy.

    The accuracy axis is a logit scale (90%, 99%, 99.9% equally far apart), so that the last steps, a few
    tenths of a point apart near 99%, stay as readable as the first ones, ten points apart near 90%.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter

    fig = new_figure(8.5, 5.5)
    ax = fig.subplots()
    done = [r for r in rows if r.get("test_accuracy_mean") is not None and r.get("train_seconds_median")]
    if not done:
        ax.text(0.5, 0.5, "no finished runs yet", ha="center", va="center", transform=ax.transAxes, fontsize=14)
        ax.set_axis_off()
        return fig
    xs = [r["train_seconds_median"] for r in done]
    # Clipped inside (0, 1): the logit of 0% or 100% is infinite.
    ys = [min(max(r["test_accuracy_mean"], 1e-4), 1 - 1e-4) for r in done]
    errs = [r.get("test_accuracy_std") or 0.0 for r in done]
    ax.plot(xs, ys, "-", color="0.75", zorder=1)
    ax.errorbar(xs, ys, yerr=errs, fmt="o", color="tab:blue", capsize=3, zorder=2)
    for k, (r, x, y) in enumerate(zip(done, xs, ys)):
        # Right and left of the point in turn: steps that cost the same time stack up in a column.
        ax.annotate(f"{r['step']} {r['name']}", (x, y), textcoords="offset points", xytext=(-7 if k % 2 else 7, -3),
                    ha="right" if k % 2 else "left", fontsize=8)
    for t in targets:
        ax.axhline(t, color="tab:red", linestyle="--", linewidth=0.8)
        ax.text(1.0, t, f" {100 * t:g}%", color="tab:red", va="center", fontsize=8,
                transform=ax.get_yaxis_transform())
    ax.set_xscale("log")
    ax.set_yscale("logit")
    low, high = min(ys + list(targets)), max(ys + list(targets))
    ax.set_ylim(max(1e-4, low - (1 - low) * 0.6), min(1 - 1e-5, 1 - (1 - high) * 0.5))
    ax.set_xlim(min(xs) / 1.6, max(xs) * 1.6)  # room for the labels
    ax.yaxis.set_major_locator(FixedLocator([0.1, 0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999]))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{100 * v:g}%"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xlabel="training seconds (median over the seeds, log scale)", ylabel="test accuracy (mean over the seeds)",
           title=title or "The ladder: test accuracy against training time")
    ax.grid(alpha=0.3)
    return fig
