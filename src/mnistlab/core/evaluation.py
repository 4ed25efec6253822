"""Evaluation: accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..base import data as data_mod
from .checkpoint import Checkpoint, load_checkpoint
from ..base.devices import select_device
from ..base.models import Ensemble

EVAL_BATCH = 4096  # images per forward pass; bounds memory, not results


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Predicted class per image (argmax; the same for logits and log-probabilities)."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction correct (counted in int64 on the device, divided on the host)."""
    return int((predictions(model, x) == y).sum(dtype=torch.int64)) / len(y)


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[i, j] = images of true class i predicted as j (int64)."""
    flat = y_true.to(torch.int64) * num_classes + y_pred.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass
class Evaluation:
    accuracy: float
    correct: int
    total: int
    classes: list[str]
    per_class_accuracy: list[float]
    confusion: list[list[int]]
    dataset: str = ""
    checkpoint: str = ""
    misclassified: list[int] = field(default_factory=list)
    member_accuracy: list[float] | None = None  # an ensemble's members, each alone

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint, "dataset": self.dataset,
            "accuracy": self.accuracy, "correct": self.correct, "total": self.total,
            "per_class_accuracy": dict(zip(self.classes, self.per_class_accuracy)),
            "classes": self.classes, "confusion": self.confusion,
            **({"member_accuracy": self.member_accuracy} if self.member_accuracy is not None else {}),
        }

    def confusion_text(self) -> str:
        """The confusion matrix as an aligned table: rows true, columns predicted."""
        width = max(5, *(len(str(v)) for row in self.confusion for v in row),
                    *(len(c) for c in self.classes)) + 1
        head = "true\\pred".ljust(12) + "".join(c[:width - 1].rjust(width) for c in self.classes)
        rows = [c[:11].ljust(12) + "".join(str(v).rjust(width) for v in row)
                for c, row in zip(self.classes, self.confusion)]
        return "\n".join([head, *rows])


def evaluate_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: list[str]) -> Evaluation:
    pred = predictions(model, x)
    cm = confusion_matrix(y, pred, len(classes)).cpu()
    # On the CPU: exact on any device. A class with no test image (your own data may lack one) has no
    # accuracy: NaN, shown as "-" and written as null, never a false 0%.
    per_class = cm.diag().double() / cm.sum(dim=1).double()
    correct = int(cm.diag().sum())
    wrong = (pred != y).nonzero().flatten().cpu().tolist()
    return Evaluation(correct / len(y), correct, len(y), list(classes), per_class.tolist(),
                      cm.tolist(), misclassified=wrong)


def evaluate(checkpoint: str | os.PathLike, data_dir: str | os.PathLike | None = None,
             device: str = "auto", split: str = "test", any_data: bool = False) -> Evaluation:
    """Evaluate a run directory or checkpoint on its dataset's test split.

    Data recognised as another dataset than the model's is a DataError, unless `any_data`.
    """
    torch_device = select_device(device)
    ckpt = load_checkpoint(checkpoint, torch_device)
    dataset = ckpt.load_data(data_dir, any_data)
    part = dataset.test if split == "test" else dataset.train
    x, y = data_mod.to_device(part, torch_device, ckpt.mean, ckpt.std)
    result = evaluate_model(ckpt.model, x, y, ckpt.classes)
    if isinstance(ckpt.model, Ensemble):
        result.member_accuracy = [accuracy(member, x, y) for member in ckpt.model.members]
    result.dataset = dataset.spec.name
    result.checkpoint = str(checkpoint)
    return result


# ---------------------------------------------------------------------------
# Every answer on a split: the confusion matrix and the images behind each of its cells

ANSWER_BATCH = 500  # images per forward pass: a CNN's first maps for 500 images take 50 MB


@dataclass
class Answers:
    """A model's answer for each image of a split (the page's Explore view)."""

    classes: list[str]
    labels: np.ndarray  # int64 (N,): the true classes
    predicted: np.ndarray  # int64 (N,): the argmax of the model's output, as `predictions` gives it
    probabilities: np.ndarray  # float32 (N, classes)

    @property
    def correct(self) -> int:
        return int((self.predicted == self.labels).sum())

    def confusion(self) -> np.ndarray:
        """counts[i, j] = images of true class i predicted as j (int64)."""
        n = len(self.classes)
        return np.bincount(self.labels * n + self.predicted, minlength=n * n).reshape(n, n)

    def cell(self, true: int, predicted: int) -> np.ndarray:
        """Indices of the images of true class `true` predicted as `predicted`, the most confident
        first (by the probability given to `predicted`; ties by index): in a cell off the diagonal,
        the most confidently wrong first."""
        indices = np.flatnonzero((self.labels == true) & (self.predicted == predicted))
        confidence = self.probabilities[indices, predicted]
        return indices[np.lexsort((indices, -confidence))]


@torch.no_grad()
def answers(checkpoint: Checkpoint, split: data_mod.Split, batch_size: int = ANSWER_BATCH) -> Answers:
    """The checkpoint's answer (predicted class, probabilities) for every image of `split`."""
    model = checkpoint.model
    model.eval()
    predicted, log_probs = [], []
    for i in range(0, len(split), batch_size):
        out = model(checkpoint.inputs(split.images[i:i + batch_size]))
        predicted.append(out.argmax(dim=1))
        log_probs.append(out if checkpoint.output == "log_softmax" else torch.log_softmax(out, dim=1))
    return Answers(list(checkpoint.classes), split.labels.numpy().astype(np.int64),
                   torch.cat(predicted).cpu().numpy().astype(np.int64),
                   torch.cat(log_probs).exp().cpu().numpy().astype(np.float32))
