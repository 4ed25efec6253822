"""TensorBoard: a run's curves and mistakes where PyTorch users look for them (`tensorboard --logdir runs/`).

A run trained with `--tensorboard` has a `tensorboard/` folder beside its events.jsonl, written from the
same events (core/events.py): the running training loss at every progress event and each epoch's row
(loss, accuracies, learning rate, seconds), all against optimiser steps so that the curves line up; and,
when the run ends, a few misclassified test digits. A resumed run goes on writing into the same folder.
The `tensorboard` package is optional (`mnistlab[tensorboard]`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..base.errors import UsageError

FOLDER = "tensorboard"
EXTRA_HINT = 'pip install "mnistlab[tensorboard]"'
MISTAKES = 16  # misclassified test digits shown when a run ends


def require() -> None:
    """UsageError naming the extra when the tensorboard package is missing: said before any training."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise UsageError(f"--tensorboard needs the tensorboard package: {EXTRA_HINT}") from None


class TensorBoard:
    """Writes one run's events as TensorBoard scalars into RUN/tensorboard/."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / FOLDER))
        self.steps_per_epoch = 1

    def write(self, e: dict[str, Any]) -> None:
        kind = e["type"]
        if kind == "started":
            self.steps_per_epoch = e["steps_per_epoch"]
            if not e["resumed"]:
                self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in e["config"].items()))
        elif kind == "progress":
            step = (e["epoch"] - 1) * self.steps_per_epoch + e["step"]
            self.writer.add_scalar("train/running_loss", e["loss"], step, walltime=e["time"])
        elif kind == "epoch":
            row, step = e["row"], e["row"]["epoch"] * self.steps_per_epoch
            for name, tag in (("train_loss", "train/loss"), ("val_accuracy", "val/accuracy"),
                              ("test_accuracy", "test/accuracy"), ("lr", "train/lr"), ("seconds", "train/seconds")):
                if row[name] is not None and math.isfinite(row[name]):
                    self.writer.add_scalar(tag, row[name], step, walltime=e["time"])
        elif kind in ("hint", "note"):
            self.writer.add_text(kind, e["message"], walltime=e["time"])
        if kind != "progress":  # the writer flushes on its own every two minutes; an epoch is worth seeing now
            self.writer.flush()

    def mistakes(self, images: torch.Tensor, true: list[int], predicted: list[int], classes: list[str],
                 step: int) -> None:
        """Misclassified test digits (uint8 (N, 28, 28)), each tagged with its true and predicted class."""
        for k, (image, t, p) in enumerate(zip(images[:MISTAKES], true, predicted)):
            self.writer.add_image(f"misclassified/{k:02d} true {classes[t]}, predicted {classes[p]}",
                                  image.unsqueeze(0), step, dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
