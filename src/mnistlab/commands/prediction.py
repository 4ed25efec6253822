"""Predict on people's own images: prepare them the way MNIST was prepared
(`prepare.prepare_image`), then classify them with a checkpoint.

Many at once (`predict_many`): files, folders (their images at any depth, in
natural order) and CSV files (each row an image, taken as it is), prepared one
by one and classified BATCH at a time, in the order given; `write_table` writes
one row per image, or Kaggle's `ImageId,Label`. An image that cannot be read is
a row with its error: it never stops the others.

On pictures simulated from real MNIST test digits (benchmarks/real_photos.py)
the default recipe's accuracy stays within about 1.5 points of its MNIST test
accuracy.
"""

from __future__ import annotations

import csv
import functools
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..core.checkpoint import Checkpoint, load_checkpoint
from ..base import own
from ..base.data import normalize
from ..base.errors import DataError, PredictionError, WriteError
from ..base.files import atomic_path, display_name
from ..base.models import as_log_probabilities, run_layers
from ..base.prepare import load_image, prepare_image
from .figures import save_prediction_figure

BATCH = 512  # images per forward pass: one pass per batch, not per image; bounds memory, not results

# ---------------------------------------------------------------------------
# Classifying

OVERFLOW = "the model's outputs overflow for this image (its probabilities would be NaN)"


def predict_batch(checkpoint: Checkpoint, images: np.ndarray) -> np.ndarray:
    """Class probabilities (float32, N x classes) for N prepared uint8 images (N, 28, 28), in one forward
    pass; a row of NaN for an image whose outputs overflow (the weights are finite: checked at load)."""
    return predict_layers(checkpoint, images)[0]


def predict_layers(checkpoint: Checkpoint, images: np.ndarray,
                   keep: Collection[int] = ()) -> tuple[np.ndarray, dict[int, torch.Tensor]]:
    """`predict_batch`, and the outputs of the model's layers numbered `keep` (`models.run_layers`)."""
    shape = tuple(checkpoint.meta["architecture"]["input_shape"])  # (channels, height, width)
    images = np.asarray(images)
    if images.shape[1:] != shape[1:]:
        raise PredictionError(f"the model takes {shape[1]}x{shape[2]} images, got shape {images.shape[1:]}")
    model = checkpoint.model
    if model.training:  # loaded in eval mode; eval() itself visits every module, at every call
        model.eval()
    if images.dtype == np.uint8:  # each grey level looked up: the values `normalize` gives, bit for bit
        levels = normalized_levels(checkpoint.mean, checkpoint.std)[images].reshape(len(images), *shape)
        x = torch.from_numpy(levels).to(next(model.parameters()).device)
    else:
        x = checkpoint.inputs(images)
    with torch.inference_mode():
        out, kept = run_layers(model, x, keep)
        probs = as_log_probabilities(out, checkpoint.output).exp().cpu().numpy()
    probs[~np.isfinite(probs).all(axis=1)] = np.nan
    return probs, kept


@functools.lru_cache(maxsize=16)
def normalized_levels(mean: float, std: float) -> np.ndarray:
    """What `normalize` makes of each grey level 0..255 (float32, 256 values), computed by it once: an
    image is normalised by looking its pixels up, in a fraction of the time of computing them (one
    table per normalisation: per dataset)."""
    table = normalize(torch.arange(256, dtype=torch.uint8).reshape(1, 1, 256), mean, std).reshape(256).numpy()
    table.flags.writeable = False
    return table


def predict_array(checkpoint: Checkpoint, image: np.ndarray) -> np.ndarray:
    """Class probabilities (float32, one per class) for one prepared uint8 image."""
    return predict_array_layers(checkpoint, image)[0]


def predict_array_layers(checkpoint: Checkpoint, image: np.ndarray,
                         keep: Collection[int] = ()) -> tuple[np.ndarray, dict[int, torch.Tensor]]:
    """`predict_array`, and the outputs of the model's layers numbered `keep` for the image (batches of one)."""
    probs, kept = predict_layers(checkpoint, np.asarray(image)[None], keep)
    if np.isnan(probs[0]).any():
        raise PredictionError(OVERFLOW)
    return probs[0], kept


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
    inputs = _with_stems([Input(display_name(p), path=os.fsdecode(p)) for p in paths])
    return list(predict_many(checkpoint, inputs, top_k, invert, save_prepared, figure))


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


# ---------------------------------------------------------------------------
# Many images: folders and CSV files, batched, into a table

@dataclass
class Input:
    """One image to classify: a file (prepared as `predict` prepares pictures), a CSV row (taken as it
    is: CSV rows are 28x28 already), or what went wrong in finding it."""

    name: str  # the file as given, or FILE.csv#ROW (data rows from 1): printable, one line
    path: str | None = None
    image: np.ndarray | None = None
    error: str | None = None
    stem: str = ""  # for the files written for it (--save-prepared, --figure)


def expand(inputs: Sequence[str | bytes | os.PathLike]) -> list[Input]:
    """The images named by `inputs`, in order: a folder stands for its image files (at any depth, natural
    order; other files passed over), a .csv file for its rows, anything else for itself."""
    items = []
    for given in inputs:
        path = os.fsdecode(given)
        shown = display_name(given)
        try:
            mode = os.stat(path).st_mode
        except (OSError, ValueError):
            mode = 0  # an image that cannot be read: said when it is opened
        if stat.S_ISDIR(mode):
            files, _, unreadable = own.image_files(Path(path))
            items += [Input(display_name(f), path=str(f)) for f in files]
            items += [Input(display_name(p) + "/", error=f"cannot read the folder ({why})") for p, why in unreadable]
        elif stat.S_ISREG(mode) and path.lower().endswith(".csv"):
            items += _csv_inputs(Path(path), shown)
        else:
            items.append(Input(shown, path=path))
    return _with_stems(items)


def _with_stems(items: list[Input]) -> list[Input]:
    """`items`, each with a stem for the files written for it, unique among them (a/7.png, b/7.png: 7, 7-2)."""
    for item, stem in zip(items, unique_stems([i.stem or i.path or i.name for i in items])):
        item.stem = stem
    return items


def _csv_inputs(path: Path, shown: str) -> list[Input]:
    """One input per row of a CSV file in Kaggle's layout (with or without its label column); a bad row
    is an input with its error; a file that is not such a CSV is one input with the error."""
    try:
        table = own.read_csv(path, shown)
    except DataError as e:
        return [Input(shown, error=str(e).removeprefix(f"{shown}: "))]
    stem = display_name(path.stem)
    rows = [(int(row), Input(f"{shown}#{row}", image=image, stem=f"{stem}-{row}"))
            for row, image in zip(table.rows, table.images)]
    rows += [(row, Input(f"{shown}#{row}", error=f"line {line}: {reason}")) for row, line, reason in table.bad]
    return [item for _, item in sorted(rows, key=lambda r: r[0])]


def predict_many(checkpoint: Checkpoint | str | os.PathLike, inputs: Iterable[Input], top_k: int = 3,
                 invert: bool | None = None, save_prepared: str | os.PathLike | None = None,
                 figure: str | os.PathLike | None = None, batch: int | None = None,
                 progress: Callable[[int], None] | None = None) -> Iterator[dict[str, Any]]:
    """Classify `inputs` (see `expand`) in order, `batch` inputs (default BATCH) per forward pass; yield one
    result per input: the answer (as `predict` gives it), or {"file", "error"}. `progress(n)` after each
    batch of n.

    Files are prepared exactly as `predict` prepares them, so each answer is `predict`'s for that file
    (its probabilities equal within float rounding: a batch is one matrix product).
    """
    checkpoint = _as_checkpoint(checkpoint)
    inputs = list(inputs)
    many = len(inputs) > 1
    batch = batch or BATCH
    for start in range(0, len(inputs), batch):
        chunk = inputs[start:start + batch]
        images, errors = [], {}
        for k, item in enumerate(chunk):
            try:
                if item.error is not None:
                    raise PredictionError(item.error)
                images.append(item.image if item.image is not None
                              else prepare_image(load_image(item.path, item.name), invert=invert))
            except PredictionError as e:
                errors[k] = e.reason
                images.append(None)
        good = [k for k, image in enumerate(images) if image is not None]
        probs = predict_batch(checkpoint, np.stack([images[k] for k in good])) if good else []
        answers = dict(zip(good, probs))
        for k, item in enumerate(chunk):
            if k in errors or np.isnan(answers[k]).any():
                yield {"file": item.name, "error": errors.get(k, OVERFLOW)}
                continue
            answer = result(item.name, answers[k], checkpoint.classes, top_k)
            if save_prepared is not None or figure is not None:
                fig = figure_path(figure, item.stem, many) if figure is not None else None
                try:
                    _outputs(answer, images[k], answers[k], item.stem, checkpoint.classes, save_prepared, fig)
                except PredictionError as e:
                    yield {"file": item.name, "error": e.reason}
                    continue
            yield answer
        if progress is not None:
            progress(len(chunk))


def table_header(classes: Sequence[str], kaggle: bool = False) -> list[str]:
    """The table's columns: id, prediction (class name), probability (of it), error, then prob_<class> for
    each class; Kaggle's submission has ImageId (from 1, in the order given) and Label only."""
    if kaggle:
        return ["ImageId", "Label"]
    return ["id", "prediction", "probability", "error", *(f"prob_{c}" for c in classes)]


def table_row(position: int, answer: dict[str, Any], classes: Sequence[str], kaggle: bool = False) -> list[Any]:
    """One row of the table for one answer of `predict_many`; `position` counts from 1."""
    if kaggle:
        return [position, answer.get("label", "")]
    if "error" in answer:
        return [answer["file"], "", "", answer["error"], *([""] * len(classes))]
    probs = answer["probabilities"]
    return [answer["file"], answer["label"], f"{probs[answer['prediction']]:.6g}", "",
            *(f"{p:.6g}" for p in probs)]


def write_rows(f, answers: Iterable[dict[str, Any]], classes: Sequence[str], kaggle: bool = False) -> dict[str, Any]:
    """Write the header, then one CSV row per answer as it comes, into the text file `f`;
    return {"rows", "errors": [(file, error), ...]}."""
    errors, rows = [], 0
    out = csv.writer(f)
    out.writerow(table_header(classes, kaggle))
    for rows, answer in enumerate(answers, start=1):
        if "error" in answer:
            errors.append((answer["file"], answer["error"]))
        out.writerow(table_row(rows, answer, classes, kaggle))
    return {"rows": rows, "errors": errors}


def write_table(answers: Iterable[dict[str, Any]], classes: Sequence[str], path: str | os.PathLike,
                kaggle: bool = False) -> dict[str, Any]:
    """`write_rows` into the file `path`, all or nothing (an atomic replace at the end): a reader never
    sees half a table; return {"path", "rows", "errors"}."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        written = write_rows(f, answers, classes, kaggle)
    return {"path": display_name(path), **written}
