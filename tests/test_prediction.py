"""Predicting on people's images: MNIST-style preparation with known answers, bad input, the CLI."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from mnistlab.core.checkpoint import Checkpoint, load_checkpoint
from mnistlab.cli import main
from mnistlab.base.errors import PredictionError
from mnistlab.base.models import build_model
from mnistlab.commands.prediction import (
    predict,
    predict_array,
    predict_files,
    predict_test_index,
)
from mnistlab.base.prepare import load_image, prepare_image, stroke_width

# ---------------------------------------------------------------------------
# Helpers: pictures with known answers


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    x = image.astype(np.float64)
    rows, cols = np.arange(x.shape[0]), np.arange(x.shape[1])
    return float(x.sum(1) @ rows / x.sum()), float(x.sum(0) @ cols / x.sum())


def ink_extent(image: np.ndarray) -> tuple[int, int]:
    """(height, width) of the box holding the at-least-half-inked pixels."""
    rows, cols = np.flatnonzero((image >= 128).any(1)), np.flatnonzero((image >= 128).any(0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def seven(size=(300, 240), ink=255, paper=0, width=22, offset=(40, 30)) -> Image.Image:
    """A '7'-like stroke, light on dark by default, drawn off-centre."""
    image = Image.new("L", size, paper)
    x, y = offset
    ImageDraw.Draw(image).line([(x, y), (x + 120, y), (x + 50, y + 180)], fill=ink, width=width,
                               joint="curve")
    return image


def close(a: np.ndarray, b: np.ndarray, mean: float = 3.0) -> bool:
    """Two prepared images are the same up to resampling noise (mean difference in grey levels)."""
    return float(np.abs(a.astype(int) - b.astype(int)).mean()) < mean


def save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


# ---------------------------------------------------------------------------
# prepare_image: MNIST's own recipe, checked on pictures with known answers


def test_a_bright_square_in_a_corner_ends_up_centred_by_its_mass():
    image = np.zeros((100, 100), np.uint8)
    image[5:25, 70:90] = 255
    out = prepare_image(image)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert ink_extent(out) == (20, 20)  # fitted into the 20x20 box
    assert out.max() == 255


def test_aspect_ratio_is_kept():
    image = np.zeros((100, 100), np.uint8)
    image[30:70, 45:55] = 255  # 40 high, 10 wide
    h, w = ink_extent(prepare_image(image))
    assert h == 20 and 4 <= w <= 6


def test_dark_on_white_transparent_and_palette_give_the_same_28x28_as_light_on_dark():
    plain = prepare_image(seven())
    dark_on_white = seven(ink=0, paper=255)
    ink = np.asarray(seven())
    canvas = np.zeros((*ink.shape, 4), np.uint8)
    canvas[..., 3] = ink  # black ink, the rest fully transparent: a drawing canvas export
    white_ink_canvas = canvas.copy()
    white_ink_canvas[..., :3] = 255
    palette = seven(ink=0, paper=255).convert("P")
    palette_transparent = seven().convert("P")
    palette_transparent.info["transparency"] = int(np.asarray(palette_transparent)[0, 0])
    for variant in (dark_on_white, Image.fromarray(canvas), Image.fromarray(white_ink_canvas), palette,
                    palette_transparent, dark_on_white.convert("RGB"), dark_on_white.convert("1")):
        assert close(prepare_image(variant), plain), variant.mode


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "CMYK", "I;16", "I", "F", "1"])
def test_any_pil_mode_is_accepted(mode):
    light = seven()
    if mode == "I;16":
        image = Image.fromarray(np.asarray(light).astype(np.uint16) * 257)  # full 16-bit range
        assert image.mode.startswith("I;16")
    else:
        image = light.convert(mode)
    assert close(prepare_image(image), prepare_image(light))


def test_numpy_arrays_in_any_usual_range():
    light = np.asarray(seven())
    expected = prepare_image(light)
    assert close(prepare_image(light.astype(np.float32) / 255), expected)
    assert close(prepare_image(np.stack([light] * 3, axis=-1)), expected)
    assert close(prepare_image(light > 127), expected, mean=6)


def test_an_mnist_style_image_passes_through_almost_unchanged():
    once = prepare_image(seven())
    assert close(prepare_image(once), once, mean=2)


def test_the_forced_polarity_overrides_detection():
    dark_on_white = seven(ink=0, paper=255)
    assert close(prepare_image(dark_on_white, invert=True), prepare_image(dark_on_white))
    # Read the other way, the white paper is the ink: a filled box, nothing like the seven.
    assert not close(prepare_image(dark_on_white, invert=False), prepare_image(seven()))


def test_a_phone_photo_rotated_by_its_exif_tag_gives_the_same_as_the_upright_one(tmp_path):
    upright = seven(ink=30, paper=220).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: the viewer rotates 90 degrees clockwise
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    rotated = save(stored, tmp_path / "rotated.jpg", quality=95, exif=exif)
    plain = save(upright, tmp_path / "upright.jpg", quality=95)
    assert close(prepare_image(load_image(rotated)), prepare_image(load_image(plain)))
    assert not close(prepare_image(stored), prepare_image(upright))  # the tag mattered


def test_a_large_noisy_photo_with_uneven_light_and_a_shadow(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 2000, 3000
    yy, xx = np.mgrid[0:h, 0:w]
    paper = 150 + 80 * xx / w  # light falling off across the sheet
    paper = np.where(yy + 0.5 * xx > 2200, paper * 0.6, paper)  # the phone's shadow over one corner
    photo = Image.fromarray(np.clip(paper + rng.normal(0, 8, (h, w)), 0, 255).astype(np.uint8))
    ImageDraw.Draw(photo).line([(1300, 500), (1700, 500), (1420, 1300)], fill=25, width=45, joint="curve")
    path = save(photo.convert("RGB"), tmp_path / "photo.jpg", quality=70)
    out = prepare_image(load_image(path))
    clean = Image.new("L", (3000, 2000), 0)
    ImageDraw.Draw(clean).line([(1300, 500), (1700, 500), (1420, 1300)], fill=255, width=45, joint="curve")
    assert close(out, prepare_image(clean), mean=6)


def test_thin_pen_strokes_are_thickened_to_mnist_widths(monkeypatch):
    image = Image.new("L", (1200, 1200), 255)
    ImageDraw.Draw(image).line([(400, 200), (800, 200), (550, 1000)], fill=0, width=6)  # 0.75% of the height
    assert stroke_width(prepare_image(image)) >= 1.0  # MNIST: 1.3 to 3.1 pixels, median 2.0
    monkeypatch.setattr("mnistlab.base.prepare.MIN_STROKE", 0.0)
    assert stroke_width(prepare_image(image)) < 0.5  # else the strokes fade to grey at 20x20


def test_pictures_without_ink_are_refused():
    for blank in (np.full((50, 80), 255, np.uint8), np.zeros((28, 28), np.uint8),
                  np.full((400, 300), 128, np.uint8) + np.random.default_rng(0).integers(0, 3, (400, 300)),
                  np.zeros((10, 10, 4), np.uint8)):
        with pytest.raises(PredictionError, match="no ink found"):
            prepare_image(blank.astype(np.uint8))


def test_unusable_arrays_are_refused_with_a_reason():
    with pytest.raises(PredictionError, match="NaN"):
        prepare_image(np.full((28, 28), np.nan))
    with pytest.raises(PredictionError, match="array"):
        prepare_image(np.zeros((2, 28, 28, 5)))
    with pytest.raises(PredictionError, match="PIL image or a numpy array"):
        prepare_image("digit.png")


# ---------------------------------------------------------------------------
# Classifying


def garment_checkpoint() -> Checkpoint:
    """An untrained network whose checkpoint names Fashion-MNIST's classes."""
    arch = {"model": "mlp", "input_shape": [1, 28, 28], "hidden": [8], "num_classes": 10}
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
               "Ankle boot"]
    meta = {"architecture": arch, "classes": classes, "normalization": {"mean": 0.5, "std": 0.5},
            "dataset": "fashion-mnist"}
    return Checkpoint(build_model(arch).eval(), meta, None)


def test_predictions_are_probabilities_named_by_the_checkpoint_classes():
    checkpoint = garment_checkpoint()
    probs = predict_array(checkpoint, prepare_image(seven()))
    assert probs.shape == (10,) and probs.sum() == pytest.approx(1, abs=1e-5) and (probs >= 0).all()
    r = predict(checkpoint, seven(), top_k=4)
    assert r["label"] == checkpoint.classes[r["prediction"]] and r["prediction"] == int(np.argmax(probs))
    assert [t["index"] for t in r["top_k"]] == list(np.argsort(-probs)[:4])
    assert r["top_k"][0]["label"] in checkpoint.classes
    with pytest.raises(PredictionError, match="28x28"):
        predict_array(checkpoint, np.zeros((20, 20), np.uint8))


def test_predict_array_uses_the_checkpoint_normalisation(tiny_run):
    import torch

    checkpoint = load_checkpoint(tiny_run)
    image = prepare_image(seven())
    x = (torch.tensor(image, dtype=torch.float32) / 255 - checkpoint.mean) / checkpoint.std
    with torch.no_grad():
        expected = torch.softmax(checkpoint.model(x.reshape(1, 1, 28, 28)), dim=1)[0].numpy()
    np.testing.assert_allclose(predict_array(checkpoint, image), expected, rtol=1e-5, atol=1e-6)


def test_predict_array_is_bitwise_the_normalise_then_forward_of_training(tiny_run):
    """However predict_array normalises (a faster way must round alike), every image, uint8 or float, gives
    exactly the probabilities of normalising it with torch as training does, then running the model."""
    import torch

    from mnistlab.base.models import log_probabilities

    checkpoint = load_checkpoint(tiny_run)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (28, 28)).astype(np.uint8) for _ in range(50)]
    images.append((np.arange(784) % 256).astype(np.uint8).reshape(28, 28))  # every level, everywhere
    for image in images:
        x = (torch.as_tensor(image, dtype=torch.float32).reshape(1, 1, 28, 28) / 255 - checkpoint.mean) / checkpoint.std
        with torch.no_grad():
            expected = log_probabilities(checkpoint.model, checkpoint.output, x).exp()[0].numpy()
        assert np.array_equal(predict_array(checkpoint, image), expected)
        assert np.array_equal(predict_array(checkpoint, image.astype(np.float32)), expected)  # the general path


def test_a_model_left_in_training_mode_still_predicts_as_in_evaluation(tmp_path):
    """Batch norm (the CNN's) uses its running statistics in a prediction, whatever mode the caller left the
    model in: a batch of one image would otherwise be normalised by itself."""
    from mnistlab.base.models import architecture
    from mnistlab.core.checkpoint import save_checkpoint

    torch.manual_seed(0)
    arch = architecture("cnn", (1, 28, 28), 10)
    model = build_model(arch)
    for module in model.modules():  # running statistics unlike a batch of one image's
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    save_checkpoint(tmp_path / "cnn", model.state_dict(), {"architecture": arch, "dataset": "mnist",
                    "classes": list("0123456789"), "normalization": {"mean": 0.5, "std": 0.5}, "metrics": {}})
    checkpoint = load_checkpoint(tmp_path / "cnn")
    image = prepare_image(seven())
    expected = predict_array(checkpoint, image)
    checkpoint.model.train()
    assert np.array_equal(predict_array(checkpoint, image), expected)
    assert not checkpoint.model.training


def bad_files(tmp_path, monkeypatch) -> dict[str, str]:
    """One of each kind of bad input: file name -> the reason expected in its error."""
    (tmp_path / "notes.png").write_text("not an image at all")
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buffer, "PNG")
    (tmp_path / "truncated.png").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    save(Image.new("RGB", (120, 90), "white"), tmp_path / "blank.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 240 - 1)  # the seven is 300x240: a warning, not
    save(seven(), tmp_path / "bomb.png")                              # PIL's error, and still refused
    save(Image.new("L", (1000, 1000)), tmp_path / "bigbomb.png")  # beyond twice the limit: PIL's error
    return {"notes.png": "not an image", "truncated.png": "truncated", "blank.png": "no ink found",
            "bomb.png": "decompression bomb", "bigbomb.png": "decompression bomb", "missing.png": "no such file"}


def test_each_bad_file_gets_one_clear_error_and_the_others_are_still_predicted(tmp_path, monkeypatch, tiny_run):
    good = save(seven(size=(200, 200), offset=(20, 5)), tmp_path / "good.png")
    expected = bad_files(tmp_path, monkeypatch)
    paths = [tmp_path / "notes.png", good, *(tmp_path / name for name in expected if name != "notes.png")]
    results = predict_files(tiny_run, paths)
    assert [r["file"] for r in results] == [str(p) for p in paths]
    by_name = {r["file"].rsplit("/", 1)[-1]: r for r in results}
    assert "prediction" in by_name["good.png"] and "error" not in by_name["good.png"]
    for name, reason in expected.items():
        assert set(by_name[name]) == {"file", "error"}
        assert reason in by_name[name]["error"], by_name[name]
    with pytest.raises(PredictionError, match="missing.png: no such file"):
        load_image(tmp_path / "missing.png")


def test_predict_test_index(tiny_run, tiny_idx_dir):
    r = predict_test_index(tiny_run, 3, tiny_idx_dir)
    assert r["file"] == "test[3]" and r["true_label"] == str(r["true_index"])
    assert len(r["probabilities"]) == 10
    with pytest.raises(PredictionError, match="out of range"):
        predict_test_index(tiny_run, 200, tiny_idx_dir)


# ---------------------------------------------------------------------------
# The command line


def test_cli_text_output_and_exit_code_1_when_any_file_failed(tmp_path, monkeypatch, capsys, tiny_run):
    good = save(seven(size=(200, 200), offset=(20, 5), ink=0, paper=255), tmp_path / "digit.png")
    expected = bad_files(tmp_path, monkeypatch)
    code = main(["predict", str(tiny_run), str(good), *(str(tmp_path / n) for n in expected), "--top-k", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    line = out.strip()
    assert line.startswith(f"{good}: ") and "top-2: " in line and line.count("%") == 3
    errors = err.strip().splitlines()
    assert len(errors) == len(expected) and "Traceback" not in err
    for name, reason in expected.items():
        assert any(e.startswith(f"error: {tmp_path / name}: ") and reason in e for e in errors), name


def test_cli_json_lines_schema(tmp_path, capsys, tiny_run):
    good = save(seven(), tmp_path / "digit.png")
    code = main(["predict", str(tiny_run), str(good), str(tmp_path / "missing.png"), "--json"])
    out, _ = capsys.readouterr()
    assert code == 1
    first, second = (json.loads(line) for line in out.strip().splitlines())
    assert set(first) == {"file", "prediction", "label", "probabilities", "top_k"}
    assert first["file"] == str(good) and isinstance(first["prediction"], int)
    assert first["label"] == str(first["prediction"])  # MNIST-style class names from the checkpoint
    assert len(first["probabilities"]) == 10 and sum(first["probabilities"]) == pytest.approx(1, abs=1e-5)
    assert [set(t) for t in first["top_k"]] == [{"label", "index", "probability"}] * 3
    assert second == {"file": str(tmp_path / "missing.png"), "error": "no such file"}


def test_cli_save_prepared_and_figures(tmp_path, capsys, tiny_run):
    a = save(seven(), tmp_path / "one.png")
    b = save(seven(ink=0, paper=255).convert("RGB"), tmp_path / "two.jpg")
    prepared, figure = tmp_path / "prepared", tmp_path / "fig.png"
    assert main(["predict", str(tiny_run), str(a), str(b), "--save-prepared", str(prepared),
                 "--figure", str(figure)]) == 0
    for stem in ("one", "two"):
        with Image.open(prepared / f"{stem}.png") as image:
            assert image.size == (28, 28) and image.mode == "L"
        with Image.open(tmp_path / f"fig-{stem}.png") as image:
            assert image.format == "PNG" and image.width > 300
    assert not figure.exists()  # several images: one figure each, never PATH itself
    out = capsys.readouterr().out
    for stem in ("one", "two"):  # every file written is named
        assert f"  figure: {tmp_path / f'fig-{stem}.png'}" in out and f"  prepared: {prepared / f'{stem}.png'}" in out
    assert main(["predict", str(tiny_run), str(a), "--figure", str(figure)]) == 0
    assert figure.is_file() and f"  figure: {figure}" in capsys.readouterr().out


def test_cli_test_index(capsys, tiny_run, tiny_idx_dir):
    assert main(["predict", str(tiny_run), "--test-index", "7", "--data-dir", str(tiny_idx_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test[7]: ") and "true: " in out and "top-3: " in out
    assert main(["predict", str(tiny_run), "--test-index", "999", "--data-dir", str(tiny_idx_dir)]) == 1
    err = capsys.readouterr().err
    assert "out of range" in err and len(err.strip().splitlines()) == 1


def test_cli_usage_errors_and_a_bad_model(tmp_path, capsys, tiny_run):
    with pytest.raises(SystemExit) as e:
        main(["predict"])
    assert e.value.code == 2
    assert main(["predict", str(tiny_run)]) == 2  # neither an image nor --test-index
    assert "--test-index" in capsys.readouterr().err
    digit = save(seven(), tmp_path / "digit.png")
    assert main(["predict", str(tiny_run), str(digit), "--top-k", "0"]) == 2
    assert main(["predict", str(tmp_path / "no-such-run"), str(digit)]) == 1
    err = capsys.readouterr().err
    assert "no-such-run" in err and len(err.strip().splitlines()) == 2 and "Traceback" not in err
    (tmp_path / "occupied").write_text("a file where the folder should go")
    assert main(["predict", str(tiny_run), str(digit), "--save-prepared", str(tmp_path / "occupied")]) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "occupied" in err and len(err.strip().splitlines()) == 1


def test_predict_proba_gives_probabilities_for_either_output_kind(tiny_run, tiny_idx_dir):
    from mnistlab.base.data import load

    ckpt = load_checkpoint(tiny_run)
    images = load("mnist", tiny_idx_dir).test.images[:5]
    probs = ckpt.predict_proba(images)
    assert probs.shape == (5, 10) and torch.allclose(probs.sum(1), torch.ones(5))
    assert torch.allclose(probs[0], ckpt.predict_proba(images[0])[0])
    assert np.allclose(probs[2].numpy(), predict_array(ckpt, images[2].numpy()), atol=1e-6)
    log_softmax = Checkpoint(build_model({**ckpt.meta["architecture"], "output": "log_softmax"}),
                             {**ckpt.meta, "architecture": {**ckpt.meta["architecture"], "output": "log_softmax"}},
                             ckpt.path)
    log_softmax.model.load_state_dict(ckpt.model.state_dict())
    assert torch.allclose(log_softmax.predict_proba(images), probs, atol=1e-6)


def test_the_test_index_figure_title_shows_the_true_label(tiny_run, tiny_idx_dir, tmp_path, monkeypatch):
    import mnistlab.commands.prediction

    titles = []
    monkeypatch.setattr(mnistlab.commands.prediction, "save_prediction_figure",
                        lambda image, probs, classes, path, title=None: titles.append(title) or path)
    item = predict_test_index(tiny_run, 3, tiny_idx_dir, figure=tmp_path / "f.png")
    assert titles == [f"test[3] (true: {item['true_label']})"]


# ---------------------------------------------------------------------------
# Many images at once: folders and CSV files, batched, into a table

def scribbles(folder, n: int, seed: int = 0) -> list:
    """`n` pictures of one stroke each, as people send them: sizes from 28 to 90 pixels, dark on light
    or light on dark, grey or colour, PNG or JPEG, in nested folders (10 a folder); their paths in
    natural order."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        size = int(rng.integers(28, 90))
        dark = bool(i % 2)
        image = Image.new("L", (size, size), 255 if dark else 0)
        points = [tuple(int(v) for v in rng.integers(2, size - 2, 2)) for _ in range(3)]
        ImageDraw.Draw(image).line(points, fill=0 if dark else 255, width=max(2, size // 10))
        if i % 3 == 0:
            image = image.convert("RGB")
        sub = folder / f"part{i // 10}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i % 10}.{'jpg' if i % 4 == 1 else 'png'}"
        image.save(path)
        paths.append(path)
    return paths


def count_forward_passes(checkpoint: Checkpoint) -> list:
    calls = []
    checkpoint.model.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    return calls


def assert_same_as_one_by_one(checkpoint, answers, paths):
    """Each answer is `predict`'s for that file alone: the same class, probabilities within float rounding."""
    assert len(answers) == len(paths)
    for answer, path in zip(answers, paths):
        try:
            alone = predict(checkpoint, path)
        except PredictionError as e:
            assert answer == {"file": str(path), "error": e.reason}
            continue
        assert answer["file"] == alone["file"] == str(path)
        assert answer["prediction"] == alone["prediction"]
        np.testing.assert_allclose(answer["probabilities"], alone["probabilities"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_bulk_predict_on_2000_images_in_one_call_equals_one_by_one(tmp_path, tiny_run):
    from mnistlab.commands.prediction import BATCH, expand, predict_many

    paths = scribbles(tmp_path / "photos", 2000)
    checkpoint = load_checkpoint(tiny_run)
    calls = count_forward_passes(checkpoint)
    answers = list(predict_many(checkpoint, expand([tmp_path / "photos"])))
    assert calls == [BATCH] * 3 + [2000 - 3 * BATCH], "one forward pass per batch, not per image"
    assert len(answers) == 2000 and all("error" not in a for a in answers)
    assert_same_as_one_by_one(checkpoint, answers, paths)


def test_bulk_predict_keeps_the_order_given_and_an_unreadable_image_is_a_row_with_its_error(tmp_path, tiny_run):
    from mnistlab.commands.prediction import expand, predict_many

    paths = scribbles(tmp_path / "photos", 60)
    (tmp_path / "photos" / "part1" / "img10.png").write_bytes(b"not a png")  # natural order: after img9
    single = scribbles(tmp_path / "single", 1, seed=1)[0]
    checkpoint = load_checkpoint(tiny_run)
    calls = count_forward_passes(checkpoint)
    answers = list(predict_many(checkpoint, expand([single, tmp_path / "photos", tmp_path / "missing.png"]),
                                batch=16))
    order = [single, *paths[:20], tmp_path / "photos" / "part1" / "img10.png", *paths[20:], tmp_path / "missing.png"]
    assert [a["file"] for a in answers] == [str(p) for p in order]
    assert answers[21] == {"file": str(order[21]), "error": "not an image (or a format Pillow cannot read)"}
    assert answers[-1] == {"file": str(tmp_path / "missing.png"), "error": "no such file"}
    assert calls == [16, 15, 16, 14]  # batches of 16 inputs; the two bad ones are not in a pass
    assert_same_as_one_by_one(checkpoint, answers, order)


def test_cli_csv_table_has_a_row_per_image_every_class_probability_and_the_errors(tmp_path, capsys, tiny_run):
    paths = scribbles(tmp_path / "photos", 25)
    (tmp_path / "photos" / "part0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    out = tmp_path / "predictions.csv"
    code = main(["predict", str(tiny_run), str(tmp_path / "photos"), "--csv", str(out)])
    stdout, stderr = capsys.readouterr()
    assert code == 1, "an image failed: said by the exit code, after the whole table is written"
    assert stdout == f"wrote {out}: 26 images, 25 predicted, 1 error\n"
    assert stderr == f"error: {tmp_path / 'photos' / 'part0' / 'broken.png'}: not an image (or a format Pillow cannot read)\n"
    import csv

    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["id", "prediction", "probability", "error", *(f"prob_{d}" for d in range(10))]
    assert len(rows) == 26 and rows[0]["id"] == str(tmp_path / "photos" / "part0" / "broken.png")
    assert rows[0]["error"] and rows[0]["prediction"] == ""
    checkpoint = load_checkpoint(tiny_run)
    for row, path in zip(rows[1:11], paths[:10]):  # part0's ten images follow broken.png (natural order)
        alone = predict(checkpoint, path)
        assert row["id"] == str(path) and row["prediction"] == alone["label"] and row["error"] == ""
        probs = [float(row[f"prob_{d}"]) for d in range(10)]
        np.testing.assert_allclose(probs, alone["probabilities"], rtol=1e-5, atol=1e-6)
        assert float(row["probability"]) == max(probs)


def test_cli_a_csv_of_images_is_predicted_row_by_row_and_a_bad_row_is_a_row_with_its_error(tmp_path, capsys,
                                                                                           tiny_run, tiny_idx_dir):
    from mnistlab.base.data import load

    test = load("mnist", tiny_idx_dir).test
    rows = [",".join(map(str, image.flatten().tolist())) for image in test.images[:30]]
    rows[7] = "dark," + rows[7].split(",", 1)[1]
    (tmp_path / "test.csv").write_text("\n".join([",".join(f"pixel{k}" for k in range(784)), *rows]) + "\n")
    code = main(["predict", str(tiny_run), str(tmp_path / "test.csv"), "--csv", "-", "--kaggle"])
    stdout, stderr = capsys.readouterr()
    assert code == 1
    lines = stdout.splitlines()
    assert lines[0] == "ImageId,Label" and [line.split(",")[0] for line in lines[1:]] == [str(i) for i in range(1, 31)]
    assert lines[8] == "8,"  # the bad row keeps its place, with no label
    assert f"error: {tmp_path / 'test.csv'}#8: line 9: pixel0 is 'dark', not a number" in stderr
    checkpoint = load_checkpoint(tiny_run)
    expected = [str(int(k)) for k in predict_proba_argmax(checkpoint, test.images[:30])]
    assert [line.split(",")[1] for line in lines[1:] if not line.endswith(",")] == expected[:7] + expected[8:]
    assert stderr.strip().endswith("wrote stdout: 30 images, 29 predicted, 1 error (Kaggle's ImageId,Label; "
                                   "an image in error has an empty Label)")


def predict_proba_argmax(checkpoint, images):
    return checkpoint.predict_proba(images).argmax(dim=1).tolist()


def test_cli_a_long_input_shows_a_progress_line(tmp_path, capsys, monkeypatch, tiny_run):
    monkeypatch.setenv("MNISTLAB_PROGRESS_SECONDS", "0")
    scribbles(tmp_path / "photos", 40)
    monkeypatch.setattr("mnistlab.commands.prediction.BATCH", 16)
    assert main(["predict", str(tiny_run), str(tmp_path / "photos"), "--csv", str(tmp_path / "p.csv")]) == 0
    err = capsys.readouterr().err
    assert "predict: 16/40 images (40%), " in err and "predict: 32/40 images (80%), " in err


@pytest.mark.parametrize("flags, message", [
    (["--kaggle"], "--kaggle goes with --csv FILE"),
    (["--csv", "t.csv", "--json"], "drop --json"),
    (["--csv", "t.csv", "--test-index", "3"], "drop --test-index"),
])
def test_cli_table_flags_that_do_not_go_together(tmp_path, capsys, tiny_run, flags, message):
    digit = save(seven(), tmp_path / "digit.png")
    assert main(["predict", str(tiny_run), str(digit), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
