"""Predict on people's own images: prepare them the way MNIST was prepared
(`prepare.prepare_image`), then classify them with a checkpoint.

On pictures simulated from real MNIST test digits (benchmarks/real_photos.py)
the default recipe's accuracy stays within about 1.5 points of its MNIST test
accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..core.checkpoint import Checkpoint, load_checkpoint
from ..base.errors import PredictionError, WriteError
from ..base.files import atomic_path, display_name
from ..base.models import log_probabilities
from ..base.prepare import load_image, prepare_image

# ---------------------------------------------------------------------------
# Classifying

def predict_array(checkpoint: Checkpoint, image: np.ndarray) -> np.ndarray:
    """Class probabilities (float32, one per class) for one prepared uint8 image."""
    shape = tuple(checkpoint.meta["architecture"]["input_shape"])  # (channels, height, width)
    image = np.asarray(image)
    if image.shape != shape[1:]:
        raise PredictionError(f"the model takes {shape[1]}x{shape[2]} images, got shape {image.shape}")
    device = next(checkpoint.model.parameters()).device
    x = torch.as_tensor(image, dtype=torch.float32, device=device).reshape(1, *shape)
    x = (x / 255 - checkpoint.mean) / checkpoint.std  # the training normalisation
    checkpoint.model.eval()
    with torch.no_grad():
        probs = log_probabilities(checkpoint.model, checkpoint.output, x).exp()
    if not torch.isfinite(probs).all():  # the weights are finite (checked at load): an overflow inside
        raise PredictionError("the model's outputs overflow for this image (its probabilities would be NaN)")
    return probs[0].cpu().numpy()


def result(name: str, probs: np.ndarray, classes: Sequence[str], top_k: int = 3) -> dict[str, Any]:
    """The per-image answer: best class (index and name), all probabilities, the top k."""
    order = np.argsort(-probs, kind="stable")[:max(1, top_k)]
    best = int(order[0])
    return {
        "file": name, "prediction": best, "label": classes[best],
        "probabilities": [float(p) for p in probs],
        "top_k": [{"label": classes[i], "index": int(i), "probability": float(probs[i])} for i in order],
    }


def predict(checkpoint: Checkpoint | str | os.PathLike, image: Any, top_k: int = 3,
            invert: bool | None = None) -> dict[str, Any]:
    """Classify one picture: an image file's path, a PIL image or a numpy array.

    The picture is prepared MNIST-style first (`prepare_image`); raises PredictionError.
    """
    checkpoint = _as_checkpoint(checkpoint)
    name = display_name(image) if isinstance(image, (str, bytes, os.PathLike)) else "image"
    if isinstance(image, (str, bytes, os.PathLike)):
        image = load_image(image)
    return result(name, predict_array(checkpoint, prepare_image(image, invert)), checkpoint.classes, top_k)


def _as_checkpoint(checkpoint: Checkpoint | str | os.PathLike) -> Checkpoint:
    return checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)


def _outputs(item: dict[str, Any], image: np.ndarray, probs: np.ndarray, stem: str, classes: Sequence[str],
             save_prepared: str | os.PathLike | None, figure: Path | None) -> None:
    """Write the prepared image and the figure when asked; note their paths in `item`.

    Failing to write is not the image's fault: PredictionError naming the output
    (for this image only: the caller goes on with the others).
    """
    path = Path(save_prepared) / f"{stem}.png" if save_prepared is not None else None
    try:
        if path is not None:
            with atomic_path(path) as tmp:
                Image.fromarray(image).save(tmp, format="PNG")
            item["prepared"] = display_name(path)
        if figure is not None:
            from .figures import save_prediction_figure

            path = figure
            title = Path(item["file"]).name
            if "true_label" in item:
                title += f" (true: {item['true_label']})"
            item["figure"] = display_name(save_prediction_figure(image, probs, list(classes), figure, title=title))
    except WriteError as e:
        e = e.cause
        in_the_way = e.filename and Path(path).parent.is_relative_to(e.filename)  # a folder on the way
        where = f": {display_name(e.filename)}" if in_the_way else ""
        raise PredictionError(f"cannot write {display_name(path)} ({e.strerror or e}{where})") from None


def figure_path(figure: str | os.PathLike, stem: str, many: bool) -> Path:
    """`--figure PATH` for one image is PATH; for several, PATH's stem gets '-<image stem>'."""
    figure = Path(figure)
    return figure.with_name(f"{figure.stem}-{stem}{figure.suffix}") if many else figure


def unique_stems(names: Sequence[str]) -> list[str]:
    """File stems as printable text (`display_name`), made unique by a -2, -3, ... suffix (a/7.png and b/7.png)."""
    stems, seen = [], {}
    for name in names:
        stem = display_name(Path(name).stem).replace("/", "_") or "image"
        seen[stem] = seen.get(stem, 0) + 1
        stems.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return stems


def predict_files(checkpoint: Checkpoint | str | os.PathLike, paths: Sequence[str | bytes | os.PathLike],
                  top_k: int = 3, invert: bool | None = None, save_prepared: str | os.PathLike | None = None,
                  figure: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Classify each image file. One result per file, in order: the answer, or {"file", "error"}.

    A bad file, or an output that cannot be written for it, never stops the
    others. `save_prepared` is a folder for the 28x28 images the network saw;
    `figure` a PNG path for the image-and-bars figure. "file" is the name as
    printable text (`display_name`: a name that is not UTF-8 shows its bytes as \\xNN).
    """
    checkpoint = _as_checkpoint(checkpoint)
    names = [os.fsdecode(p) for p in paths]  # bytes names too; undecodable bytes kept (surrogateescape)
    results = []
    for name, stem in zip(names, unique_stems(names)):
        shown = display_name(name)
        try:
            image = prepare_image(load_image(name, shown), invert=invert)
            probs = predict_array(checkpoint, image)
            item = result(shown, probs, checkpoint.classes, top_k)
            fig = figure_path(figure, stem, len(names) > 1) if figure is not None else None
            _outputs(item, image, probs, stem, checkpoint.classes, save_prepared, fig)
        except PredictionError as e:
            results.append({"file": shown, "error": e.reason})
            continue
        results.append(item)
    return results


def predict_test_index(checkpoint: Checkpoint | str | os.PathLike, index: int,
                       data_dir: str | os.PathLike | None = None, top_k: int = 3,
                       save_prepared: str | os.PathLike | None = None,
                       figure: str | os.PathLike | None = None, any_data: bool = False) -> dict[str, Any]:
    """Classify item `index` of the checkpoint's dataset's test split (already MNIST-style).

    The data must not be recognised as another dataset than the model's, unless `any_data`.
    An output that cannot be written makes the result {"file", "error"}.
    """
    checkpoint = _as_checkpoint(checkpoint)
    test = checkpoint.load_data(data_dir, any_data).test
    if not 0 <= index < len(test):
        raise PredictionError(f"test item {index} is out of range: the test split has "
                              f"{len(test)} images (0 to {len(test) - 1})")
    image = test.images[index].numpy()
    probs = predict_array(checkpoint, image)
    name = f"test[{index}]"
    item = result(name, probs, checkpoint.classes, top_k)
    true = int(test.labels[index])
    item.update(true_index=true, true_label=checkpoint.classes[true])
    try:
        _outputs(item, image, probs, f"test-{index}", checkpoint.classes, save_prepared,
                 Path(figure) if figure is not None else None)
    except PredictionError as e:
        return {"file": name, "error": e.reason}
    return item
