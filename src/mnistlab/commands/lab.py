"""What the lab's views ask of the server beyond an answer, as the API's documents.

Draw: each step of the preparation (`prepare.prepare_steps`), the saliency map
and the first layer (`core.explain`), added to /api/predict's answer when asked.
Explore: each model's answers on its test set (`evaluation.answers`), computed
once per model version and kept in an `AnswerCache`, and the confusion matrix
and the test images of one of its cells made from them.

serve.py builds the routes from these; nothing here knows about HTTP.
"""

from __future__ import annotations

import base64
import io
from collections import OrderedDict
from dataclasses import dataclass

import anyio
import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field

from ..base.prepare import BOX, SIZE, Preparation
from ..core.checkpoint import Checkpoint
from ..core.evaluation import Answers, answers
from ..core.explain import first_layer, integrated_gradients

MAX_EXAMPLES = 100  # test images in one answer of /api/models/NAME/examples


# ---------------------------------------------------------------------------
# The documents (they make the OpenAPI description)

class PreparationStep(BaseModel):
    name: str = Field(description="drawn, ink, cropped, fitted or centred")
    title: str = Field(description="what the step did, for people")
    width: int
    height: int
    image: str = Field(description="the step's picture as a data: URL of a grey PNG (0 black .. 255 white)")
    box: list[int] | None = Field(None, description="for 'ink': the crop that the next step keeps, "
                                  "[top, left, bottom, right] in its pixels (bottom and right excluded)")


class SaliencyOut(BaseModel):
    method: str = Field(description="'integrated gradients'")
    baseline: str = Field(description="the image the path starts from: 'black' (MNIST's background)")
    steps: int = Field(description="steps of the path integral (midpoint rule)")
    target: int = Field(description="the class explained: the predicted one unless ?saliency_class says")
    label: str = Field(description="that class's name")
    values: list[list[float]] = Field(description="28x28: each pixel's share of the change of the class's "
                                      "log-probability (nats); positive pixels push the class up")
    change: float = Field(description="log p(class | image) - log p(class | black image): what the "
                          "values add up to, up to the integration error")
    total: float = Field(description="the sum of the values")


class FirstLayerUnit(BaseModel):
    index: int = Field(description="the unit's or filter's place in the layer")
    activation: float = Field(description="MLP: the unit's output for this image; CNN: the mean of the "
                              "filter's feature map")
    weights: list[list[float]] = Field(description="an MLP unit's 784 weights as 28x28, or a 3x3 conv filter")


class FirstLayerOut(BaseModel):
    kind: str = Field(description="'units' (an MLP's first Linear layer) or 'filters' (a CNN's first Conv2d)")
    description: str = Field(description="e.g. 'Linear(784, 128) + ReLU'")
    size: int = Field(description="units or filters in the layer")
    units: list[FirstLayerUnit] = Field(description="the most active for this image first: 8 of an MLP's "
                                        "units, all of a CNN's filters")


class Confusion(BaseModel):
    model: str
    dataset: str
    commit: str | None = Field(description="the model version these counts are for (null outside a run)")
    classes: list[str]
    total: int = Field(description="test images")
    correct: int
    accuracy: float = Field(description="correct / total (0..1)")
    per_class_accuracy: list[float] = Field(description="per true class, in class order (0..1)")
    confusion: list[list[int]] = Field(description="confusion[t][p]: test images of true class t predicted as p")


class Example(BaseModel):
    index: int = Field(description="the image's place in the test set")
    image: list[list[int]] = Field(description="28x28 grey levels (0..255, ink bright), as the network sees it")
    probabilities: list[float] = Field(description="one per class, in class order")


class Examples(BaseModel):
    model: str
    true: int
    predicted: int
    true_label: str
    predicted_label: str
    total: int = Field(description="test images in this cell of the confusion matrix")
    offset: int
    examples: list[Example] = Field(description="the most confident first (by the predicted class's "
                                    "probability): off the diagonal, the most confidently wrong first")


# ---------------------------------------------------------------------------
# Draw: the explanations of one prepared image

@dataclass(frozen=True)
class Extras:
    """What an answer may carry beyond the class and the hidden layers: the Draw view's explanations."""

    preparation: bool = False  # each step of the preparation, as PNGs
    saliency: bool = False  # the integrated-gradients map ...
    saliency_class: int | None = None  # ... of this class (None: the predicted one)
    first_layer: bool = False  # the first layer's most active units or filters


def preparation_out(steps: Preparation) -> list[PreparationStep]:
    rows, cols = steps.crop
    shown = [
        ("drawn", "as drawn, in grey levels" + (" (ink dark: turned over next)" if steps.inverted else ""),
         steps.grey, None),
        ("ink", "ink made bright on black: paper, shadows and specks removed; the box is the crop",
         steps.ink, [rows.start, cols.start, rows.stop, cols.stop]),
        ("cropped", "cropped to the ink", steps.cropped, None),
        ("fitted", f"scaled to fit {BOX}x{BOX}, aspect ratio kept", steps.fitted, None),
        ("centred", f"centred by mass in {SIZE}x{SIZE}: what the network sees", steps.image, None),
    ]
    return [PreparationStep(name=name, title=title, width=pixels.shape[1], height=pixels.shape[0],
                            image=_png(pixels), box=box) for name, title, pixels, box in shown]


def saliency_out(checkpoint: Checkpoint, image: np.ndarray, target: int) -> SaliencyOut:
    found = integrated_gradients(checkpoint, image, target)
    return SaliencyOut(method="integrated gradients", baseline="black", steps=found.steps, target=target,
                       label=checkpoint.classes[target], values=_rounded(found.values, 6),
                       change=found.change, total=float(found.values.sum(dtype=np.float64)))


def first_layer_out(checkpoint: Checkpoint, image: np.ndarray) -> FirstLayerOut | None:
    layer = first_layer(checkpoint, image)
    if layer is None:
        return None
    return FirstLayerOut(kind=layer.kind, description=layer.description, size=layer.size, units=[
        FirstLayerUnit(index=u.index, activation=u.activation, weights=_rounded(u.weights, 4))
        for u in layer.units])


def _png(pixels: np.ndarray) -> str:
    """Grey levels (0..255, any float or int type) as a data: URL of an 8-bit grey PNG."""
    buffer = io.BytesIO()
    # compress_level 1: a 512x512 step in about a millisecond, a few times larger than at the default 6
    Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8)).save(buffer, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _rounded(values: np.ndarray, decimals: int) -> list:
    """Nested lists of floats rounded in float64: a float32 rounded to 4 decimals still prints with 17
    digits (0.12340000271797180), three times the JSON."""
    return np.round(values.astype(np.float64), decimals).tolist()


# ---------------------------------------------------------------------------
# Explore: the test set's answers, once per model version

def model_version(checkpoint: Checkpoint) -> tuple[str, str | None]:
    """What identifies a model's weights: its file and the run's commit id (models in a run directory change
    under a running server, one commit at a time; a checkpoint outside a run has no commit)."""
    return str(checkpoint.path), checkpoint.meta.get("commit")


@dataclass
class Answered:
    answers: Answers
    images: np.ndarray  # uint8 (N, 28, 28): the test images answered


class AnswerCache:
    """Models' answers on their test sets, computed on first use, one model at a time in a thread of
    their own (a CNN takes seconds: the prediction workers stay free); the last `keep` versions are
    kept. A model whose data cannot be found (never downloaded here) raises DataError, and is tried
    again next time."""

    def __init__(self, keep: int = 8):
        self.keep = keep
        self._done: OrderedDict[tuple[str, str | None], Answered] = OrderedDict()
        self._limiter: anyio.CapacityLimiter | None = None

    async def get(self, checkpoint: Checkpoint) -> Answered:
        key = model_version(checkpoint)
        if key not in self._done:
            if self._limiter is None:  # made on the event loop's first use, as anyio requires
                self._limiter = anyio.CapacityLimiter(1)
            await anyio.to_thread.run_sync(lambda: self._compute(checkpoint, key), limiter=self._limiter)
        self._done.move_to_end(key)
        return self._done[key]

    def _compute(self, checkpoint: Checkpoint, key: tuple[str, str | None]) -> None:
        if key in self._done:  # computed while this request waited for the thread
            return
        torch.set_num_threads(1)  # for this thread: the other cores keep serving predictions
        test = checkpoint.load_data(download=False).test
        self._done[key] = Answered(answers(checkpoint, test), test.images.numpy())
        while len(self._done) > self.keep:
            self._done.popitem(last=False)


def confusion_out(name: str, checkpoint: Checkpoint, found: Answers) -> Confusion:
    counts = found.confusion()
    total = len(found.labels)
    return Confusion(model=name, dataset=checkpoint.meta["dataset"], commit=checkpoint.meta.get("commit"),
                     classes=found.classes, total=total, correct=found.correct,
                     accuracy=found.correct / max(total, 1),
                     per_class_accuracy=(counts.diagonal() / np.maximum(counts.sum(axis=1), 1)).tolist(),
                     confusion=counts.tolist())


def examples_out(name: str, answered: Answered, true: int, predicted: int, offset: int, limit: int) -> Examples:
    found = answered.answers
    cell = found.cell(true, predicted)
    return Examples(model=name, true=true, predicted=predicted, true_label=found.classes[true],
                    predicted_label=found.classes[predicted], total=len(cell), offset=offset,
                    examples=[Example(index=int(i), image=answered.images[i].tolist(),
                                      probabilities=found.probabilities[i].tolist())
                              for i in cell[offset:offset + limit]])
