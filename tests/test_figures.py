"""Figures: the notebook's view_classify, and the PNGs a run writes (curves, confusion, image grids)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mnistlab.commands import figures
from mnistlab.base.data import DATASETS
from mnistlab.cli import main
from mnistlab.commands.figures import (
    DPI,
    confusion_figure,
    curves_figure,
    misclassified_figure,
    samples_figure,
    save_png,
    save_prediction_figure,
    view_classify,
)

FASHION = DATASETS["fashion-mnist"].classes

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DIGITS = [str(k) for k in range(10)]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) in pixels of a file that must be a complete, valid PNG."""
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def inches_to_px(width: float, height: float) -> tuple[int, int]:
    return round(width * DPI), round(height * DPI)


def notebook_probabilities(seed: int = 0) -> torch.Tensor:
    """ps as the notebook makes it: torch.exp of a (1, 10) row of log-probabilities."""
    logits = torch.randn(1, 10, generator=torch.Generator().manual_seed(seed))
    return torch.exp(torch.log_softmax(logits, dim=1))


def tick_labels(axis) -> list[str]:
    return [t.get_text() for t in axis.get_ticklabels()]


# ---------------------------------------------------------------------------
# view_classify

def test_view_classify_takes_the_notebooks_call_shape():
    img = torch.rand(1, 784)
    ps = notebook_probabilities()
    fig = view_classify(img.view(1, 28, 28), ps)
    assert len(fig.axes) == 2
    ax_img, ax_bar = fig.axes
    assert ax_img.images[0].get_array().shape == (28, 28)
    bars = ax_bar.patches
    assert len(bars) == 10
    np.testing.assert_allclose([b.get_width() for b in bars], ps.flatten().numpy(), rtol=1e-6)
    assert tick_labels(ax_bar.yaxis) == DIGITS
    assert ax_bar.get_xlim() == (0, 1.1)
    assert ax_bar.get_title() == "Class Probability"
    assert fig.canvas.manager is None  # a plain Figure: no pyplot window, no global state


@pytest.mark.parametrize("shape", [(784,), (28, 28), (1, 28, 28), (1, 1, 28, 28)])
def test_view_classify_accepts_any_784_element_image(shape):
    ps = notebook_probabilities().squeeze(0)  # (10,) works as well as (1, 10)
    fig = view_classify(np.random.default_rng(0).random(shape), ps)
    assert fig.axes[0].images[0].get_array().shape == (28, 28)


def test_view_classify_accepts_tensors_that_require_grad():
    logits = torch.randn(1, 10, requires_grad=True)
    fig = view_classify(torch.rand(1, 28, 28, requires_grad=True), torch.softmax(logits, dim=1))
    assert len(fig.axes[1].patches) == 10


def test_view_classify_names_bars_with_class_names():
    fig = view_classify(torch.rand(28, 28), notebook_probabilities(), classes=FASHION)
    assert tick_labels(fig.axes[1].yaxis) == list(FASHION)
    helper_style = view_classify(torch.rand(28, 28), notebook_probabilities(), version="Fashion")
    assert tick_labels(helper_style.axes[1].yaxis) == list(FASHION)


def test_view_classify_titles_the_image_with_the_prediction_or_the_given_title():
    ps = torch.zeros(10)
    ps[3] = 1.0
    assert view_classify(torch.rand(784), ps).axes[0].get_title() == "predicted: 3 (100.0%)"
    assert view_classify(torch.rand(784), ps, title="my digit").axes[0].get_title() == "my digit"


def test_view_classify_rejects_what_it_cannot_draw():
    with pytest.raises(ValueError, match="probabilities"):
        view_classify(torch.rand(784), torch.log_softmax(torch.randn(10), dim=0))  # forgot torch.exp
    with pytest.raises(ValueError, match="class names"):
        view_classify(torch.rand(784), notebook_probabilities(), classes=["a", "b"])
    with pytest.raises(ValueError, match="square"):
        view_classify(torch.rand(780), notebook_probabilities())


def test_save_prediction_figure_writes_a_png_atomically(tmp_path):
    out = tmp_path / "out" / "prediction.png"
    path = save_prediction_figure(torch.rand(28, 28), notebook_probabilities().squeeze(0), FASHION, out,
                                  title="shirt.jpg")
    assert path == out
    assert png_size(out) == inches_to_px(6.5, 3.0)
    assert [p.name for p in out.parent.iterdir()] == ["prediction.png"]  # no temporary file left


# ---------------------------------------------------------------------------
# Figure builders

def test_save_png_writes_the_figure_size_times_dpi(tmp_path):
    fig = figures.new_figure(3, 2)
    assert png_size(save_png(fig, tmp_path / "f.png")) == inches_to_px(3, 2)


def test_curves_plot_loss_every_epoch_and_accuracy_where_measured():
    rows = [{"epoch": e, "train_loss": 1.0 / e, "val_accuracy": None, "test_accuracy": None}
            for e in (1, 2, 3)]
    rows[-1]["test_accuracy"] = 0.97
    ax_loss, ax_acc = curves_figure(rows, title="run").axes
    assert list(ax_loss.lines[0].get_xdata()) == [1, 2, 3]
    assert len(ax_acc.lines) == 1
    assert list(ax_acc.lines[0].get_ydata()) == [97.0]
    assert ax_acc.get_ylabel() == "accuracy (%)" and ax_loss.get_xlabel() == "epoch"


def test_a_one_epoch_run_draws_whole_epochs_on_the_x_axis():
    fig = curves_figure([{"epoch": 1, "train_loss": 0.5, "val_accuracy": None, "test_accuracy": 0.9}])
    for ax in fig.axes:
        fig.canvas.draw()
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [1.0] and ax.get_xlim() == (0.5, 1.5)


def test_confusion_shows_counts_and_class_names_on_both_axes():
    counts = np.diag(np.arange(10, 20))
    counts[3, 5] = 7
    ax = confusion_figure(counts, FASHION).axes[0]
    assert tick_labels(ax.xaxis) == list(FASHION) and tick_labels(ax.yaxis) == list(FASHION)
    assert ax.get_xticklabels()[0].get_rotation() == 45  # long names do not overlap
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("predicted", "true")
    texts = {(t.get_position(), t.get_text()) for t in ax.texts}
    assert ((5, 3), "7") in texts  # column = predicted, row = true
    assert len(ax.texts) == 100


def test_misclassified_titles_say_true_and_predicted():
    images = np.zeros((40, 28, 28), dtype=np.uint8)
    true, pred = [k % 10 for k in range(40)], [(k + 1) % 10 for k in range(40)]
    fig = misclassified_figure(images, true, pred, DIGITS, total=123)
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == figures.MAX_MISCLASSIFIED
    assert drawn[3].get_title() == "true 3 / pred 4"
    assert "36 of 123" in fig.get_suptitle()
    long_names = misclassified_figure(images[:2], [9, 0], [5, 6], FASHION)
    assert long_names.axes[0].get_title() == "true Ankle boot\npred Sandal"


def test_samples_show_each_class_in_its_own_column():
    labels = np.repeat(np.arange(10), 5)
    images = np.zeros((50, 28, 28), dtype=np.uint8)
    fig = samples_figure(images, labels, FASHION, per_class=4)
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 40
    assert [ax.get_title() for ax in drawn[:10]] == list(FASHION)


# ---------------------------------------------------------------------------
# A run's figures and `mnistlab plot`

def test_plot_command_writes_four_valid_pngs(tiny_run, tiny_idx_dir, capsys):
    assert main(["plot", str(tiny_run), "--data-dir", str(tiny_idx_dir)]) == 0
    printed = capsys.readouterr().out.split()
    folder = tiny_run / "figures"
    assert printed == [str(folder / name) for name in figures.FIGURE_NAMES]
    sizes = {Path(p).name: png_size(Path(p)) for p in printed}
    assert sizes["curves.png"] == inches_to_px(10, 4)
    assert sizes["confusion.png"] == inches_to_px(7.5, 6.5)
    one_row = figures.CELL + figures.LINE
    assert sizes["samples.png"] == inches_to_px(10 * figures.CELL, 4 * one_row + 0.4)  # 4 per class, 10 classes
    assert sorted(p.name for p in folder.iterdir()) == sorted(figures.FIGURE_NAMES)


def test_plot_run_finds_the_data_the_run_was_trained_on(tiny_run):
    paths = figures.plot_run(tiny_run)  # no data_dir: the run remembers it
    assert [p.name for p in paths] == list(figures.FIGURE_NAMES)


def test_plot_command_on_a_missing_run_is_one_line_and_exit_1(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err


def test_plot_command_needs_the_runs_metrics(tiny_run, tmp_path, capsys):
    for name in ("model.safetensors", "model.json"):
        shutil.copy(tiny_run / name, tmp_path / name)
    assert main(["plot", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "metrics.csv is missing" in err


def test_the_python_train_writes_no_figures_and_mnistlab_plot_run_writes_the_clis(tmp_path, tiny_idx_dir):
    import mnistlab

    config = mnistlab.recipe("seed", epochs=1, device="cpu")
    run = mnistlab.train(config, out=tmp_path / "run", data_dir=tiny_idx_dir).run_dir
    assert not (run / "figures").exists()  # as documented: the CLI's `train` draws them, the function does not
    assert [p.name for p in mnistlab.plot_run(run)] == list(figures.FIGURE_NAMES)
    assert sorted(p.name for p in (run / "figures").iterdir()) == sorted(figures.FIGURE_NAMES)
