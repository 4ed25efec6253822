"""Your own data: folders of images and CSV files as datasets, every bad one refused in one line,
and everything downstream (train, evaluate, plot, inspect, export, serve) with the dataset's own classes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import fake_digits
from PIL import Image, ImageDraw

from mnistlab import cli
from mnistlab.base import data, names, own, prepare
from mnistlab.base.config import Config, ConfigError, recipe
from mnistlab.base.errors import DataError
from mnistlab.core.checkpoint import load_checkpoint

LETTERS = tuple("abcdefghijkl")  # 12 classes


# ---------------------------------------------------------------------------
# Trees written by the tests: each class a stroke at its own angle, drawn as people's pictures are
# (dark ink on light paper, any size, grey or colour, PNG or JPEG); every image different.

def stroke(k: int, classes: int, rng: np.random.Generator, size: int | None = None, mode: str = "L") -> Image.Image:
    """Class k of `classes`: a thick line at angle k * 180 / classes degrees, with a random offset and width."""
    size = size or int(rng.integers(36, 140))
    paper, ink = (255, 0) if mode == "L" else ((250, 245, 235), tuple(int(v) for v in rng.integers(0, 90, 3)))
    image = Image.new(mode, (size, size), paper)
    angle = math.pi * k / classes
    r = size * rng.uniform(0.3, 0.42)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1) * size, size / 2 + rng.uniform(-0.1, 0.1) * size
    dx, dy = r * math.cos(angle), r * math.sin(angle)
    ImageDraw.Draw(image).line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=ink,
                               width=max(2, int(size * rng.uniform(0.06, 0.12))))
    return image


def write_tree(root: Path, classes=("a", "b", "c"), per_class=(14, 4), split=True, seed=0) -> Path:
    """train/<class>/ and test/<class>/ (or <class>/ alone) of PNG and JPEG pictures, grey and RGB, mixed sizes."""
    rng = np.random.default_rng(seed)
    parts = (("train", per_class[0]), ("test", per_class[1])) if split else (("", sum(per_class)),)
    for part, count in parts:
        for k, name in enumerate(classes):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = stroke(k, len(classes), rng, mode="RGB" if i % 3 == 0 else "L")
                if i % 2:
                    image.save(folder / f"{i}.jpg", quality=95)
                else:
                    image.save(folder / f"{i}.png")
    return root


def write_grey_28(root: Path, dark_on_light: bool = False, per_class=(12, 3)) -> Path:
    """A tree of 28x28 grey PNGs (MNIST-like: bright ink on black), from the fake digits of conftest."""
    images, labels = fake_digits(400, seed=5)
    counts: dict[tuple[str, int], int] = {}
    for image, label in zip(images, labels):
        part = "train" if counts.get(("train", label), 0) < per_class[0] else "test"
        if counts.get((part, label), 0) >= per_class[part == "test"]:
            continue
        counts[(part, label)] = counts.get((part, label), 0) + 1
        folder = root / part / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - image if dark_on_light else image).save(folder / f"{counts[(part, label)]}.png")
    return root


def error_of(name: str, **kwargs) -> str:
    """The one-line DataError that loading `name` gives."""
    with pytest.raises(DataError) as err:
        data.load(name, **kwargs)
    message = str(err.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture(scope="module")
def tree3(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("own") / "shapes")


# ---------------------------------------------------------------------------
# Folder datasets

def test_a_tree_with_train_and_test_folders_is_a_dataset_of_its_folder_names(tree3):
    ds = data.load(f"folder:{tree3}")
    assert ds.classes == ("a", "b", "c") and ds.spec.name == f"folder:{tree3}"
    assert ds.train.images.shape == (42, 28, 28) and str(ds.train.images.dtype) == "torch.uint8"
    assert str(ds.train.labels.dtype) == "torch.int64" and ds.test.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert "train/ and test/ folders" in ds.source and "every image prepared" in ds.source


def test_every_image_is_prepared_by_the_code_predict_uses(tree3):
    ds = data.load(f"folder:{tree3}")
    files = sorted((tree3 / "test" / "b").iterdir(), key=lambda p: own.natural_key(p.name))
    expected = [prepare.prepare_image(prepare.load_image(p)) for p in files]
    np.testing.assert_array_equal(ds.test.images[4:8].numpy(), np.stack(expected))


def test_twelve_classes_in_one_tree_hold_out_a_seeded_stratified_fifth(tmp_path):
    root = write_tree(tmp_path / "letters", LETTERS, per_class=(12, 3), split=False)
    ds = data.load(f"folder:{root}")
    assert ds.classes == LETTERS
    assert np.bincount(ds.test.labels.numpy()).tolist() == [3] * 12  # 20% of 15 in each class
    assert np.bincount(ds.train.labels.numpy()).tolist() == [12] * 12
    assert "one tree, 20% of each class held out as the test split, seed 0" in ds.source
    data.clear_cache()
    again = data.load(f"folder:{root}")
    assert np.array_equal(again.test.images.numpy(), ds.test.images.numpy()), "the split is the same every time"


def test_class_folders_are_in_natural_order(tmp_path):
    root = write_tree(tmp_path / "n", ("2", "10", "1"), per_class=(10, 2))
    assert data.load(f"folder:{root}").classes == ("1", "2", "10")


def test_28x28_grey_images_are_taken_as_they_are(tmp_path):
    root = write_grey_28(tmp_path / "mnistlike")
    ds = data.load(f"folder:{root}")
    assert "images taken as they are (all 28x28 grey)" in ds.source
    first = np.asarray(Image.open(root / "train" / "0" / "1.png"))
    np.testing.assert_array_equal(ds.train.images[0].numpy(), first)


def test_28x28_dark_ink_on_light_paper_is_turned_bright_on_black(tmp_path):
    root = write_grey_28(tmp_path / "inverted", dark_on_light=True)
    ds = data.load(f"folder:{root}")
    assert "inverted" in ds.source
    first = np.asarray(Image.open(root / "train" / "0" / "1.png"))
    np.testing.assert_array_equal(ds.train.images[0].numpy(), 255 - first)


def test_one_picture_of_another_size_gets_every_image_prepared(tmp_path):
    root = write_grey_28(tmp_path / "mixed")
    stroke(0, 3, np.random.default_rng(1), size=60).save(root / "train" / "0" / "big.png")
    assert "every image prepared" in data.load(f"folder:{root}").source


def test_a_folder_dataset_is_parsed_once_then_cached_by_content(tree3, monkeypatch):
    first = data.load(f"folder:{tree3}")

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of read from the parsed cache")

    with monkeypatch.context() as m:
        m.setattr(own.prepare, "load_image", no_decoding)
        second = data.load(f"folder:{tree3}")
    assert np.array_equal(first.train.images.numpy(), second.train.images.numpy())
    assert second.source == first.source and second.classes == first.classes


def test_a_changed_image_is_read_again(tmp_path):
    root = write_tree(tmp_path / "t", per_class=(10, 2))
    before = data.load(f"folder:{root}").train.images[0].numpy()
    stroke(1, 3, np.random.default_rng(9)).save(root / "train" / "a" / "0.png")  # another picture, same name
    assert not np.array_equal(data.load(f"folder:{root}").train.images[0].numpy(), before)


def test_the_name_holds_the_absolute_path_so_a_run_remembers_where_its_data_was(tree3, monkeypatch):
    monkeypatch.chdir(tree3.parent)
    config = recipe("seed", dataset=f"folder:{tree3.name}")
    assert config.dataset == f"folder:{tree3}"
    assert Config.from_dict(config.to_dict()).dataset == config.dataset
    assert names.short(config.dataset) == "folder-shapes"
    with pytest.raises(ConfigError, match="lacks its path"):
        recipe("seed", dataset="folder:")
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'"):
        recipe("seed", dataset="cifar")
    with pytest.raises(ConfigError, match="give it with its test file in the TOML file"):
        recipe("seed", dataset="test.csv")  # what `sweep --dataset csv:train.csv,test.csv` makes of its list
    with pytest.raises(ConfigError, match=r"a folder of images is folder:PATH\)$"):
        recipe("seed", dataset="photos/digits")


def test_a_moved_folder_is_found_with_data_dir(tree3, tmp_path):
    moved = tmp_path / "elsewhere"
    moved.symlink_to(tree3, target_is_directory=True)
    ds = data.load("folder:/gone/shapes", data_dir=moved)
    assert ds.spec.name == "folder:/gone/shapes" and len(ds.train) == 42


# ---------------------------------------------------------------------------
# Every bad tree: one line, saying what is wrong and what to do

def test_an_empty_class_is_named(tmp_path):
    root = write_tree(tmp_path / "t", per_class=(10, 2))
    for f in (root / "train" / "b").iterdir():
        f.unlink()
    message = error_of(f"folder:{root}")
    assert "train/b/" in message and "holds no image" in message


def test_a_class_only_in_test_is_named(tmp_path):
    root = write_tree(tmp_path / "t", per_class=(10, 2))
    (root / "test" / "b").rename(root / "test" / "z")
    message = error_of(f"folder:{root}")
    assert "'z' only in test/" in message and "train/z/" in message


def test_unreadable_files_are_counted_and_the_first_few_named_and_skip_bad_goes_on(tmp_path):
    root = write_tree(tmp_path / "t", per_class=(12, 2))
    broken = [root / "train" / c / f"broken{i}.png" for c in "ab" for i in range(2)]
    for path in broken:
        path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "test" / "c" / "blank.png").write_bytes((root / "test" / "c" / "0.png").read_bytes()[:60])
    Image.new("L", (50, 50), 255).save(root / "train" / "c" / "white.png")  # no ink: cannot be prepared
    message = error_of(f"folder:{root}")
    assert "6 of 48 files cannot be read as images: test/c/blank.png: truncated or corrupt" in message
    assert "train/a/broken0.png: not an image" in message and "; and 3 more;" in message and "--skip-bad" in message
    assert data.parsed_cache_dir().exists() is False or not list(data.parsed_cache_dir().iterdir())
    ds = data.load(f"folder:{root}", skip_bad=True)
    assert len(ds.train) == 36 and len(ds.test) == 6
    assert "6 unreadable files left out (--skip-bad)" in ds.source


def test_a_fifo_named_like_an_image_is_an_unreadable_file_never_opened(tmp_path):
    root = write_tree(tmp_path / "t", per_class=(10, 2))
    os.mkfifo(root / "train" / "a" / "pipe.png")  # opening it to read would wait for a writer forever
    message = error_of(f"folder:{root}")
    assert "1 of 37 files cannot be read as images: train/a/pipe.png: cannot read (is a FIFO (named pipe)" in message
    assert len(data.load(f"folder:{root}", skip_bad=True).train) == 30


def test_fewer_than_ten_training_images_in_a_class_is_refused(tmp_path):
    root = write_tree(tmp_path / "t", per_class=(10, 2))
    (root / "train" / "c" / "0.png").unlink()
    message = error_of(f"folder:{root}")
    assert "fewer than 10 training images in class 'c' (9)" in message


def test_the_same_image_in_train_and_test_is_refused(tmp_path):
    root = write_tree(tmp_path / "t", per_class=(10, 2))
    (root / "test" / "a" / "copy.png").write_bytes((root / "train" / "a" / "4.png").read_bytes())
    message = error_of(f"folder:{root}")
    assert "1 test image is also in the training split (the same file content)" in message
    assert "test/a/copy.png = train/a/4.png" in message


def test_copies_in_one_tree_stay_on_one_side_of_the_split(tmp_path):
    root = write_tree(tmp_path / "t", per_class=(10, 3), split=False)
    for i in range(4):
        (root / "a" / f"copy{i}.png").write_bytes((root / "a" / "0.png").read_bytes())
    ds = data.load(f"folder:{root}")
    copies = (ds.train.images == ds.train.images[0]).flatten(1).all(1).sum() if len(ds.train) else 0
    first = prepare.prepare_image(prepare.load_image(root / "a" / "0.png"))
    in_test = int((ds.test.images.numpy() == first).reshape(len(ds.test), -1).all(1).sum())
    in_train = int((ds.train.images.numpy() == first).reshape(len(ds.train), -1).all(1).sum())
    assert {in_test, in_train} == {0, 5} and copies >= 0


@pytest.mark.parametrize("layout, expected", [
    ("train only", "has train/ but no test/"),
    ("an extra folder", "also val/"),
    ("one class", "only the class folder 'a'"),
    ("no class folder", "no class folder"),
    ("a file", "not a folder of class folders"),
    ("nothing there", "no such file or folder"),
])
def test_a_tree_of_neither_layout_is_one_line(tmp_path, layout, expected):
    root = tmp_path / "t"
    if layout == "train only":
        write_tree(root, per_class=(10, 2), split=False)
        (root / "a").rename(tmp_path / "a")
        (root / "train").mkdir()
        (tmp_path / "a").rename(root / "train" / "a")
    elif layout == "an extra folder":
        write_tree(root, per_class=(10, 2))
        (root / "val").mkdir()
    elif layout == "one class":
        write_tree(root, ("a",), per_class=(10, 2), split=False)
    elif layout == "no class folder":
        root.mkdir()
        stroke(0, 3, np.random.default_rng(0)).save(root / "x.png")
    elif layout == "a file":
        root.write_text("x")
    assert expected in error_of(f"folder:{root}")


def test_the_cli_says_a_bad_tree_in_one_line_and_trains_nothing(tmp_path, capsys):
    root = write_tree(tmp_path / "t", per_class=(10, 2))
    (root / "test" / "b").rename(root / "test" / "z")
    code = cli.main(["train", "--dataset", f"folder:{root}", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "only in test/" in err
    assert not (tmp_path / "run").exists()


def test_datasets_reads_a_folder_and_shows_its_classes(tree3, capsys):
    assert cli.main(["datasets", f"folder:{tree3}"]) == 0
    out = capsys.readouterr().out
    assert f"folder:{tree3}: your own data: a folder of images, 3 classes" in out
    assert "3 classes, 42 training and 12 test images:" in out and "b       14 train        4 test" in out
    assert cli.main(["datasets", f"folder:{tree3}", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [c["name"] for c in summary["classes"]] == ["a", "b", "c"] and summary["test"] == 12


# ---------------------------------------------------------------------------
# CSV datasets (Kaggle's digit-recognizer layout)

def write_csv(path: Path, n: int, seed: int, labels: bool = True, header: bool = True) -> Path:
    images, digits = fake_digits(n, seed)
    with open(path, "w") as f:
        if header:
            f.write(",".join((["label"] if labels else []) + [f"pixel{k}" for k in range(784)]) + "\n")
        for image, digit in zip(images, digits):
            f.write(",".join(([str(digit)] if labels else []) + [str(v) for v in image.ravel()]) + "\n")
    return path


@pytest.mark.parametrize("header", [True, False])
def test_a_kaggle_csv_with_or_without_its_header(tmp_path, header):
    train = write_csv(tmp_path / "train.csv", 300, seed=1, header=header)
    test = write_csv(tmp_path / "test.csv", 60, seed=2, header=header)
    ds = data.load(f"csv:{train},{test}")
    images, digits = fake_digits(60, seed=2)
    np.testing.assert_array_equal(ds.test.images.numpy(), images)
    np.testing.assert_array_equal(ds.test.labels.numpy(), digits)
    assert ds.classes == tuple("0123456789") and len(ds.train) == 300
    assert f"test split from {test}" in ds.source and "taken as they are" in ds.source


def test_a_single_csv_holds_out_a_stratified_fifth(tmp_path):
    train = write_csv(tmp_path / "train.csv", 500, seed=1)
    ds = data.load(f"csv:{train}")
    assert len(ds.train) + len(ds.test) == 500 and "20% of each class held out" in ds.source
    counts = np.bincount(fake_digits(500, seed=1)[1], minlength=10)
    assert np.bincount(ds.test.labels.numpy(), minlength=10).tolist() == [round(c / 5) for c in counts]


def test_labels_that_are_not_0_to_9_become_the_class_names(tmp_path):
    rows = ["label," + ",".join(f"pixel{k}" for k in range(784))]
    rng = np.random.default_rng(0)
    for i in range(60):
        rows.append(f"{[3, 7, 12][i % 3]}," + ",".join(map(str, rng.integers(0, 256, 784))))
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    assert data.load(f"csv:{tmp_path / 't.csv'}").classes == ("3", "7", "12")


def test_a_test_csv_without_labels_cannot_be_a_test_split(tmp_path):
    train = write_csv(tmp_path / "train.csv", 200, seed=1)
    test = write_csv(tmp_path / "test.csv", 20, seed=2, labels=False)
    message = error_of(f"csv:{train},{test}")
    assert "no label column (784 values a row), so it cannot be a test split" in message
    assert "mnistlab predict RUN TEST.csv --kaggle" in message and f"csv:{train} alone" in message


@pytest.mark.parametrize("change, expected", [
    (lambda f: f.replace(",0,", ",,", 1), "row 4 (line 5): pixel"),
    (lambda f: f.replace(",0,", ",abc,", 1), "is 'abc', not a number"),
    (lambda f: f.replace(",0,", ",1.5,", 1), "is '1.5', not a whole number"),
    (lambda f: f.replace(",0,", ",300,", 1), "is 300, outside 0-255"),
    (lambda f: f.rsplit(",", 1)[0], "784 values, expected 785"),
    (lambda f: f.rsplit(",", 1)[0] + ",", "pixel783 is missing"),
])
def test_a_bad_value_is_one_line_with_its_row_number(tmp_path, change, expected):
    train = write_csv(tmp_path / "train.csv", 200, seed=1)
    lines = train.read_text().splitlines()
    lines[4] = change(lines[4])
    train.write_text("\n".join(lines) + "\n")
    message = error_of(f"csv:{train}")
    assert expected in message and "1 of 200 rows cannot be read" in message and "--skip-bad" in message
    ds = data.load(f"csv:{train}", skip_bad=True)
    assert len(ds.train) + len(ds.test) == 199 and "1 bad row left out" in ds.source


def test_a_csv_of_another_layout_is_refused_at_its_first_line(tmp_path):
    (tmp_path / "x.csv").write_text("a,b,c\n1,2,3\n")
    assert "line 1 has 3 columns; expected a label then 784 pixels" in error_of(f"csv:{tmp_path / 'x.csv'}")
    (tmp_path / "e.csv").write_text("")
    assert "the file is empty" in error_of(f"csv:{tmp_path / 'e.csv'}")


def test_a_csv_is_read_in_chunks_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(own, "CHUNK", 7)  # many chunks, one with a bad row in the middle
    train = write_csv(tmp_path / "train.csv", 200, seed=1)
    lines = train.read_text().splitlines()
    lines[50] = lines[50].replace(",0,", ",x,", 1)
    train.write_text("\n".join(lines) + "\n")
    ds = data.load(f"csv:{train}", skip_bad=True)
    images, _ = fake_digits(200, seed=1)
    kept = np.delete(images, 49, axis=0)
    got = np.concatenate([ds.train.images.numpy(), ds.test.images.numpy()])
    assert sorted(map(bytes, got)) == sorted(map(bytes, kept))
    monkeypatch.setattr(own, "read_csv", lambda *a, **k: pytest.fail("parsed again"))
    assert len(data.load(f"csv:{train}", skip_bad=True).train) == len(ds.train)


def test_the_same_row_in_train_and_test_csv_is_refused(tmp_path):
    train = write_csv(tmp_path / "train.csv", 200, seed=1)
    test = write_csv(tmp_path / "test.csv", 20, seed=2)
    with open(test, "a") as f:
        f.write(train.read_text().splitlines()[3] + "\n")
    assert "test image is also in the training split (the same 784 pixels)" in error_of(f"csv:{train},{test}")


# ---------------------------------------------------------------------------
# Downstream: the same commands as for MNIST, with the dataset's own class names

@pytest.fixture(scope="module")
def letters_run(tmp_path_factory) -> Path:
    """`mnistlab train --dataset folder:...` on 12 classes, through the training code as it is."""
    base = tmp_path_factory.mktemp("letters")
    root = write_tree(base / "letters", LETTERS, per_class=(12, 3))
    out = base / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNISTLAB_DATA", str(base / "cache"))
        code = cli.main(["train", "--dataset", f"folder:{root}", "--recipe", "default", "--epochs", "3",
                         "--batch-size", "32", "--shift", "0", "--device", "cpu", "--out", str(out)])
    assert code == 0
    return out


def test_a_folder_dataset_trains_with_the_training_code_as_it_is(letters_run):
    meta = json.loads((letters_run / "model.json").read_text())
    assert meta["classes"] == list(LETTERS) and meta["architecture"]["num_classes"] == 12
    assert meta["dataset"].startswith("folder:/") and meta["dataset"].endswith("/letters")
    assert json.loads((letters_run / "config.json").read_text())["dataset"] == meta["dataset"]
    assert load_checkpoint(letters_run).classes == list(LETTERS)
    for name in ("curves.png", "confusion.png", "misclassified.png", "samples.png"):
        assert (letters_run / "figures" / name).stat().st_size > 0


def test_evaluate_shows_the_confusion_matrix_with_the_class_names(letters_run, capsys):
    assert cli.main(["evaluate", str(letters_run)]) == 0
    out = capsys.readouterr().out
    assert "on folder:" in out and "(36 test images)" not in out
    header = [line for line in out.splitlines() if line.startswith("true\\pred")][0]
    assert header.split()[1:] == list(LETTERS)
    assert cli.main(["evaluate", str(letters_run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["classes"] == list(LETTERS) and sum(map(sum, result["confusion"])) == 36


def test_a_model_whose_folder_gained_a_class_is_refused_by_name(letters_run, tmp_path):
    root = Path(json.loads((letters_run / "model.json").read_text())["dataset"].removeprefix("folder:"))
    moved = write_tree(tmp_path / "more", (*LETTERS, "m"), per_class=(12, 3))
    with pytest.raises(DataError, match="now holds the classes a, b, c.* \\(13\\); the model was trained on 12"):
        load_checkpoint(letters_run).load_data(moved)
    assert len(load_checkpoint(letters_run).load_data(root).classes) == 12


def test_inspect_plot_and_export_carry_the_class_names(letters_run, tmp_path, capsys):
    from mnistlab.commands.inspection import inspect_step

    result = inspect_step(letters_run, batch_size=8)
    assert list(result["batch"]["label_counts"]) == list(LETTERS)
    assert result["chance_loss"] == pytest.approx(math.log(12))
    fresh = inspect_step("mlp", batch_size=8, dataset=json.loads((letters_run / "model.json").read_text())["dataset"])
    assert fresh["model"]["parameters"][-1]["shape"] == [12]
    out = tmp_path / "model.pt"
    assert cli.main(["export", str(letters_run), "--format", "torchscript", "--out", str(out)]) == 0
    sidecar = json.loads(Path(f"{out}.json").read_text())
    assert sidecar["classes"] == list(LETTERS) and sidecar["output"]["shape"] == ["N", 12]


def test_the_page_lists_the_folder_classes(letters_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mnistlab.commands.serve import create_app, load_models

    with TestClient(create_app(load_models([letters_run]))) as client:
        [model] = client.get("/api/models").json()["models"]
        assert model["classes"] == list(LETTERS) and model["dataset"].startswith("folder:/")
        answer = client.post("/api/predict", content=png_of(stroke(5, 12, np.random.default_rng(3))),
                             headers={"Content-Type": "image/png"}).json()
        assert answer["label"] in LETTERS and len(answer["probabilities"]) == 12


def png_of(image: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_class_without_test_images_has_no_accuracy_rather_than_zero(tmp_path, capsys):
    root = write_tree(tmp_path / "t", per_class=(12, 3))
    for f in (root / "test" / "c").iterdir():
        f.unlink()
    (root / "test" / "c").rmdir()
    run = tmp_path / "run"
    from mnistlab.core.engine import train

    train(recipe("default", dataset=f"folder:{root}", epochs=1, shift=0, device="cpu"), out=run)
    assert cli.main(["evaluate", str(run)]) == 0
    assert "             c        -  (no test image)" in capsys.readouterr().out
    assert cli.main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["per_class_accuracy"]["c"] is None


def test_train_skip_bad_trains_without_the_unreadable_files(tmp_path, capsys):
    root = write_tree(tmp_path / "t", per_class=(12, 3))
    (root / "train" / "a" / "broken.png").write_bytes(b"not a png")
    args = ["train", "--dataset", f"folder:{root}", "--epochs", "1", "--shift", "0", "--device", "cpu", "--no-plots"]
    assert cli.main([*args, "--out", str(tmp_path / "refused")]) == 1
    assert "1 of 46 files cannot be read as images" in capsys.readouterr().err
    assert cli.main([*args, "--out", str(tmp_path / "run"), "--skip-bad"]) == 0
    assert "1 unreadable file left out (--skip-bad)" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "run").load_data().source.endswith("left out (--skip-bad)")


def test_a_csv_dataset_trains_and_predict_answers_its_test_csv_for_kaggle(tmp_path, capsys):
    train = write_csv(tmp_path / "train.csv", 400, seed=1)
    test = write_csv(tmp_path / "test.csv", 50, seed=2, labels=False, header=False)
    assert cli.main(["train", "--dataset", f"csv:{train}", "--recipe", "default", "--epochs", "4",
                     "--shift", "0", "--device", "cpu", "--out", str(tmp_path / "run"), "--no-plots"]) == 0
    capsys.readouterr()
    submission = tmp_path / "submission.csv"
    assert cli.main(["predict", str(tmp_path / "run"), str(test), "--csv", str(submission), "--kaggle"]) == 0
    rows = submission.read_text().splitlines()
    assert rows[0] == "ImageId,Label" and len(rows) == 51
    assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 51)]
    table = tmp_path / "table.csv"
    assert cli.main(["predict", str(tmp_path / "run"), str(test), "--csv", str(table)]) == 0
    predicted = [line.split(",") for line in table.read_text().splitlines()[1:]]
    assert [p[0] for p in predicted] == [f"{test}#{i}" for i in range(1, 51)]
    assert [p[1] for p in predicted] == [r.split(",")[1] for r in rows[1:]]
    truth = fake_digits(50, seed=2)[1]
    right = sum(int(r.split(",")[1]) == t for r, t in zip(rows[1:], truth))
    assert right >= 30, f"{right}/50, where chance is 5: the fake digits are easy to learn"
