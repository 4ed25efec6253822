"""Your own data as a dataset: a folder of images sorted by class, or pixels in CSV files.

folder:PATH
    PATH/train/<class>/... and PATH/test/<class>/...: the two splits as they are; or
    PATH/<class>/...: one tree, of which HOLDOUT of each class is held out as the test
    split (seeded and stratified: the same images whatever the training seed).
    The class names are the folder names, in natural order (2 before 10). Image files are
    found at any depth by their suffix (IMAGE_SUFFIXES); hidden files are passed over.
    When every image is already 28x28 grey, the images are taken as they are; otherwise
    every image is prepared by `prepare.prepare_image`, the code `mnistlab predict` uses,
    so that a model sees at training what it will see when predicting.
csv:TRAIN.csv[,TEST.csv]
    Kaggle's digit-recognizer layout: a label column, then 784 pixel columns (0-255, a
    28x28 image row by row), a header line or none. Rows are taken as they are. A file
    of 784 columns has no labels: it cannot be a test split (it is what `mnistlab predict
    RUN TEST.csv --kaggle` answers). Without TEST.csv, HOLDOUT of each class of TRAIN.csv
    is held out as the test split. The class names are the label values.

Every bad dataset is one line: a layout that is neither of the above, an empty class, a
class only in test, files (or rows) that cannot be read (their count and the first few:
`skip_bad` goes on without them), fewer than MIN_PER_CLASS training images in a class,
the same image in train and test (by the SHA-256 of a file's bytes, of a CSV row's pixels).

`scan(kind, paths)` lists the files and checks what needs no decoding; its `key` hashes
their content (the parsed cache's key, in data.py); `read` decodes and checks the rest.
numpy, Pillow (through prepare.py) only: no torch.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import os
import re
import stat
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterator

import numpy as np
import PIL
from PIL import Image

from .. import __version__
from . import names, prepare
from .errors import DataError, PredictionError
from .files import display_name, file_kind, hash_file, open_regular, read_regular

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                            ".pgm", ".ppm", ".pbm", ".pnm"})
HOLDOUT = 0.2  # fraction of each class held out as the test split when there is no test split
HOLDOUT_SEED = 0  # fixed: the test split must not change with the training seed
MIN_PER_CLASS = 10  # training images a class needs: fewer teach the network nothing about it
SHOWN = 3  # bad files (or rows) named in a message; the rest are counted
MAX_CLASS_NAME = 100  # characters, as in model.json
MAX_CLASSES = 256  # labels are kept as bytes, as in IDX files (EMNIST's largest split has 62 classes)
SIDE = 28
PIXELS = SIDE * SIDE
GREY_MODES = ("L", "1")  # modes whose pixels are grey levels as they are (8-bit grey, black and white)
FORMAT = 1  # bump when what is read from the same files changes: older cache entries are then never used


@dataclass
class Own:
    """What `read` gives: the four arrays of a dataset (data.ROLES), its class names, and one line
    saying where the data came from and how it was taken (prepared or as it is, split how)."""

    arrays: dict[str, np.ndarray]
    classes: tuple[str, ...]
    description: str


def scan(kind: str, paths: tuple[str, ...]) -> "Tree | Tables":
    """The source of your own data named `kind:paths` (names.own), listed and checked; DataError if unusable."""
    return Tree(Path(paths[0])) if kind == names.FOLDER else Tables(*map(Path, paths))


def natural_key(text: str) -> tuple:
    """Numbers by their value, the rest by its text: 2 before 10, img9 before img10."""
    return tuple((0, int(part), part) if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text))


def _mode(path: Path, what: str) -> int:
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{what} {display_name(path)}: no such file or folder") from None
    except OSError as e:
        raise DataError(f"{what} {display_name(path)}: cannot read ({e.strerror or e})") from None


def _held_out(labels: np.ndarray, groups: list[bytes], fraction: float = HOLDOUT,
              seed: int = HOLDOUT_SEED) -> np.ndarray:
    """A mask of the images held out as the test split: in each class, `fraction` of its distinct
    images (at least one when it has two), so that copies of one image never straddle the split.

    The images held out are those whose keyed hash SHA-256(seed, image) is smallest: the
    same whatever the order of the files, and adding an image moves at most one other.
    """
    test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        distinct = sorted({groups[i] for i in members},
                          key=lambda g: hashlib.sha256(seed.to_bytes(8, "little") + g).digest())
        count = min(max(round(fraction * len(distinct)), 1), len(distinct) - 1)
        chosen = set(distinct[:count])
        test[[i for i in members if groups[i] in chosen]] = True
    return test


def _pixel_digests(images: np.ndarray) -> list[bytes]:
    return [hashlib.sha256(image.tobytes()).digest() for image in images]


def _check(where: str, classes: tuple[str, ...], train_labels: np.ndarray, overlap: list[tuple[str, str]],
           same: str) -> None:
    """The checks made once the images are read: images in both splits, classes too small to learn."""
    if overlap:
        (test_name, train_name), more = overlap[0], len(overlap) - 1
        raise DataError(f"{where}: {len(overlap)} test image{'s are' if len(overlap) > 1 else ' is'} also in the "
                        f"training split ({same}), e.g. {test_name} = {train_name}"
                        + (f" and {more} more" if more else "")
                        + "; remove them from one split, or the test accuracy measures memory")
    counts = np.bincount(train_labels, minlength=len(classes))
    small = [f"{classes[k]!r} ({counts[k]})" for k in np.flatnonzero(counts < MIN_PER_CLASS)]
    if small:
        raise DataError(f"{where}: fewer than {MIN_PER_CLASS} training images in class{'es' if len(small) > 1 else ''} "
                        f"{', '.join(small[:10])}{' ...' if len(small) > 10 else ''}; add images or remove the class")


def _overlap(train: list[bytes], test: list[bytes], train_names: list[str],
             test_names: list[str]) -> list[tuple[str, str]]:
    """(test image, training image) for each test image whose pixels are also in the training split."""
    seen = {d: name for d, name in zip(train, train_names)}
    return [(name, seen[d]) for d, name in zip(test, test_names) if d in seen]


def _bad_line(where: str, bad: list[tuple[str, str]], total: int, what: str = "files",
              verb: str = "cannot be read as images") -> str:
    """`bad` holds (file, reason) or, for CSV rows, ("row N (line L)", reason)."""
    shown = "; ".join(f"{name}: {reason}" for name, reason in bad[:SHOWN])
    more = f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    return (f"{where}: {len(bad)} of {total} {what} {verb}: {shown}{more}; fix or remove them, "
            "or pass --skip-bad to go on without them")


def _split_arrays(images: np.ndarray, labels: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    return {"train_images": images[~test], "train_labels": labels[~test].astype(np.uint8),
            "test_images": images[test], "test_labels": labels[test].astype(np.uint8)}


def _holdout_text() -> str:
    return f"{round(100 * HOLDOUT)}% of each class held out as the test split, seed {HOLDOUT_SEED}"


# ---------------------------------------------------------------------------
# Folders of images

def image_files(folder: Path) -> tuple[list[Path], int, list[tuple[Path, str]]]:
    """The image files under `folder` at any depth, in natural order of their path, the number of other
    files passed over, and the folders that could not be read (with the reason).

    An image file is a name with one of IMAGE_SUFFIXES (anything but a folder: a FIFO named
    x.png is listed, and refused by name when read). Hidden files and folders are passed over.
    """
    found, others, unreadable = [], 0, []

    def error(e: OSError) -> None:
        unreadable.append((Path(e.filename), e.strerror or str(e)))

    for top, dirs, files in os.walk(folder, onerror=error):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for fname in files:
            if fname.startswith("."):
                continue
            if Path(fname).suffix.lower() in IMAGE_SUFFIXES:
                found.append(Path(top) / fname)
            else:
                others += 1
    found.sort(key=lambda p: natural_key(p.relative_to(folder).as_posix()))
    return found, others, unreadable


def _subfolders(folder: Path) -> list[str]:
    """The names of the folders in `folder` (symbolic links followed), hidden ones passed over, in natural order."""
    try:
        entries = list(os.scandir(folder))
    except OSError as e:
        raise DataError(f"{display_name(folder)}: cannot read ({e.strerror or e})") from None
    return sorted((e.name for e in entries if not e.name.startswith(".") and e.is_dir()), key=natural_key)


@dataclass
class Item:
    path: Path
    name: str  # relative to the root, for messages
    label: int
    test: bool  # in the test folder (layout with train/ and test/)
    digest: bytes = b""  # SHA-256 of the file's bytes; empty when it could not be read
    problem: str = ""  # why it could not be read


@dataclass
class Tree:
    """A folder dataset, listed: the layout, the classes and every image file with its class."""

    root: Path
    split: bool = False  # train/ and test/ folders; else one tree and a held-out fraction
    classes: tuple[str, ...] = ()
    items: list[Item] = field(default_factory=list)
    others: int = 0  # files passed over: not images by their name
    unreadable_folders: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        root = self.root
        where = f"folder:{display_name(root)}"
        mode = _mode(root, "folder:")
        if not stat.S_ISDIR(mode):
            raise DataError(f"{where}: is {file_kind(mode)}, not a folder of class folders")
        top = _subfolders(root)
        if "train" in top or "test" in top:
            if not ("train" in top and "test" in top):
                has, lacks = ("train", "test") if "train" in top else ("test", "train")
                raise DataError(f"{where}: has {has}/ but no {lacks}/; give both, each with one folder per class, "
                                f"or put the class folders directly in it ({_holdout_text()})")
            extra = [d for d in top if d not in ("train", "test")]
            if extra:
                raise DataError(f"{where}: holds train/ and test/ and also {', '.join(d + '/' for d in extra)}; "
                                "move or remove the other folders (a validation split is taken from train/ with "
                                "--val-size)")
            self.split = True
            train, test = _subfolders(root / "train"), _subfolders(root / "test")
            only_test = [c for c in test if c not in train]
            if only_test:
                raise DataError(f"{where}: class{'es' if len(only_test) > 1 else ''} "
                                f"{', '.join(repr(c) for c in only_test)} only in test/; add "
                                f"train/{only_test[0]}/ with its training images, or remove test/{only_test[0]}/")
            folders = [("train", c) for c in train] + [("test", c) for c in test]
            self.classes = tuple(train)
        else:
            folders = [("", c) for c in top]
            self.classes = tuple(top)
        if len(self.classes) < 2:
            holds = f"only the class folder {self.classes[0]!r}" if self.classes else "no class folder"
            raise DataError(f"{where}: holds {holds}{' in train/' if self.split else ''}; a folder dataset needs "
                            "one folder per class and at least 2 classes")
        if len(self.classes) > MAX_CLASSES:
            raise DataError(f"{where}: holds {len(self.classes)} class folders; at most {MAX_CLASSES} classes")
        for name in self.classes:
            if not (name.isprintable() and len(name) <= MAX_CLASS_NAME):
                raise DataError(f"{where}: the class folder {display_name(name)!r} cannot be a class name "
                                f"(printable text of 1 to {MAX_CLASS_NAME} characters); rename it")
        index = {c: k for k, c in enumerate(self.classes)}
        empty = []
        for split, cls in folders:
            folder = root / split / cls
            files, others, unreadable = image_files(folder)
            self.others += others
            self.unreadable_folders += [(display_name(p.relative_to(root)) + "/", why) for p, why in unreadable]
            if not files and not unreadable:
                empty.append(f"{split}/{cls}/" if split else f"{cls}/")
            self.items += [Item(p, display_name(p.relative_to(root)), index[cls], split == "test") for p in files]
        if empty:
            raise DataError(f"{where}: {'these class folders hold' if len(empty) > 1 else 'the class folder'} "
                            f"{', '.join(empty)} {'hold' if len(empty) > 1 else 'holds'} no image "
                            f"({', '.join(sorted(IMAGE_SUFFIXES))}); add images or remove "
                            f"{'them' if len(empty) > 1 else 'it'}")

    @property
    def where(self) -> str:
        return f"folder:{display_name(self.root)}"

    def key(self, skip_bad: bool) -> str:
        """The parsed cache's key: the SHA-256 of every file's bytes, with its place in the tree,
        and of what turns them into arrays (this module's choices, preparation's code, Pillow)."""
        digest = hashlib.sha256(f"mnistlab-own-folder-v{FORMAT};{HOLDOUT};{HOLDOUT_SEED};{skip_bad};"
                                f"pillow {PIL.__version__};{self.split};".encode())
        digest.update(_preparation_code())
        for name in self.classes:
            digest.update(f"class:{len(name)}:{name};".encode())
        for item in self.items:
            try:
                item.digest = _file_digest(item.path)
            except (OSError, ValueError) as e:
                item.problem = f"cannot read ({getattr(e, 'strerror', None) or e})"
            digest.update(f"{item.test};{item.label};{len(item.name)}:{item.name};".encode() + item.digest)
        for name, why in self.unreadable_folders:
            digest.update(f"unreadable:{name};".encode())
        return digest.hexdigest()[:32]

    def read(self, skip_bad: bool, progress: bool = False) -> Own:
        """Decode (and prepare, unless all are 28x28 grey) every image; check the dataset; the arrays."""
        images, bad, how = _decode(self.items, progress)
        bad = self.unreadable_folders + bad
        if bad and not skip_bad:
            raise DataError(_bad_line(self.where, bad, len(self.items)))
        good = [i for i, image in enumerate(images) if image is not None]
        items = [self.items[i] for i in good]
        pixels = np.stack([images[i] for i in good]) if good else np.zeros((0, SIDE, SIDE), np.uint8)
        labels = np.array([item.label for item in items], dtype=np.int64)
        # By the files' bytes: two photos may well prepare to the same 28x28 pixels (a straight stroke)
        digests = [item.digest for item in items]
        if self.split:
            test = np.array([item.test for item in items], dtype=bool)
            layout = "train/ and test/ folders"
        else:
            test = _held_out(labels, digests) if len(items) else np.zeros(0, bool)
            layout = f"one tree, {_holdout_text()}"
        names_ = [item.name for item in items]
        overlap = (_overlap([d for d, t in zip(digests, test) if not t], [d for d, t in zip(digests, test) if t],
                            [n for n, t in zip(names_, test) if not t], [n for n, t in zip(names_, test) if t])
                   if self.split else [])
        _check(self.where, self.classes, labels[~test], overlap, "the same file content")
        notes = [f"{display_name(self.root)}: {layout}, {len(self.classes)} classes, {int((~test).sum())} training "
                 f"and {int(test.sum())} test images; {how}"]
        if bad:
            notes.append(f"{len(bad)} unreadable file{'s' if len(bad) > 1 else ''} left out (--skip-bad)")
        if self.others:
            notes.append(f"{self.others} file{'s' if self.others > 1 else ''} passed over (not images by their name)")
        return Own(_split_arrays(pixels, labels, test), self.classes, "; ".join(notes))


def _file_digest(path: Path) -> bytes:
    return hash_file(path, "sha256").digest()


def _preparation_code() -> bytes:
    """The bytes of prepare.py: a change to the preparation makes new cache entries."""
    try:
        return read_regular(prepare.__file__)
    except (OSError, TypeError):
        return __version__.encode()


def _decode(items: list[Item], progress: bool) -> tuple[list[np.ndarray | None], list[tuple[str, str]], str]:
    """Each item's 28x28 uint8 image (None when it cannot be read or prepared), the bad items with the
    reason, and how the images were taken (one phrase).

    The images are taken as they are when every one is 28x28 grey; as soon as one is not, every
    image is prepared by `prepare_image`, as `mnistlab predict` prepares pictures.
    """
    from tqdm import tqdm

    images: list[np.ndarray | None] = [None] * len(items)
    bad: list[tuple[str, str]] = []
    as_is: dict[int, Image.Image] | None = {}  # the 28x28 grey images, until one is not: then None
    for i, item in enumerate(tqdm(items, desc="reading images", unit="image", leave=False, file=sys.stderr,
                                  disable=not (progress and sys.stderr.isatty()), delay=1)):
        if item.problem:
            bad.append((item.name, item.problem))
            continue
        try:
            image = prepare.load_image(item.path, item.name)
            if as_is is not None and image.size == (SIDE, SIDE) and _stored_mode(item.path) in GREY_MODES:
                as_is[i] = image
                continue
            if as_is is not None:  # the first picture that is not 28x28 grey: prepare them all
                for j, earlier in as_is.items():
                    images[j] = _prepared(earlier, items[j], bad)
                as_is = None
            images[i] = prepare.prepare_image(image)
        except PredictionError as e:
            bad.append((item.name, e.reason))
    bad.sort(key=lambda b: natural_key(b[0]))
    if as_is is None:
        return images, bad, "every image prepared as `mnistlab predict` prepares pictures (not all are 28x28 grey)"
    for j, image in as_is.items():
        images[j] = np.asarray(image.convert("L"), dtype=np.uint8)
    kept = [images[j] for j in as_is]
    # MNIST's ink is bright on black; dark ink on light paper (most pixels light) is turned over.
    if kept and float(np.median(np.stack(kept))) > 127:
        for j in as_is:
            images[j] = 255 - images[j]
        return images, bad, "images taken as they are (all 28x28 grey), inverted: dark ink on light paper made bright on black as in MNIST"
    return images, bad, "images taken as they are (all 28x28 grey)"


def _prepared(image: Image.Image, item: Item, bad: list[tuple[str, str]]) -> np.ndarray | None:
    try:
        return prepare.prepare_image(image)
    except PredictionError as e:
        bad.append((item.name, e.reason))
        return None


def _stored_mode(path: Path) -> str:
    """The image mode as stored in the file ("" if it cannot be read again): a JPEG is decoded in grey
    whatever it holds (prepare's draft), so the decoded image's mode does not tell."""
    try:
        with open_regular(path) as f, Image.open(f) as image:
            return image.mode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return ""


# ---------------------------------------------------------------------------
# CSV files

CHUNK = 4096  # rows parsed by numpy at once: memory stays bounded whatever the file's size
MAX_LABEL = 10**6  # a label value is a class name; more distinct values than this is not a class list


@dataclass
class Rows:
    """The rows of one CSV file: images (N, 28, 28) uint8, labels (N,) int64 or None when the file has
    no label column, the data-row numbers (from 1) of these rows, and the bad rows ((row, line, reason))."""

    images: np.ndarray
    labels: np.ndarray | None
    rows: np.ndarray
    bad: list[tuple[int, int, str]]
    total: int  # data rows in the file, good and bad


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _text_lines(f: IO[bytes]) -> Iterator[tuple[int, str]]:
    """(line number from 1, line) for each non-blank line, the byte-order mark of the first dropped."""
    text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="replace", newline="")
    for number, line in enumerate(text, start=1):
        line = line.rstrip("\r\n")
        if line.strip():
            yield number, line


def read_csv(path: Path, where: str | None = None) -> Rows:
    """Parse a CSV file of images (Kaggle's digit-recognizer layout) in chunks of CHUNK rows.

    Bad rows (a missing, non-numeric or out-of-range value, a wrong number of values) are
    returned in `bad`, not raised: the caller decides whether they stop it. DataError for a
    file that cannot be read or whose first line is neither a header nor a row of the layout.
    """
    where = where or display_name(path)
    try:
        f = open_regular(path)
    except FileNotFoundError:
        raise DataError(f"{where}: no such file") from None
    except OSError as e:
        raise DataError(f"{where}: cannot read ({e.strerror or e})") from None
    with f:
        lines = _text_lines(f)
        first = next(lines, None)
        if first is None:
            raise DataError(f"{where}: the file is empty")
        fields = next(csv.reader([first[1]]))
        header = not _is_number(fields[0])  # label or pixel0; a row with a bad value later is a bad row
        if header:
            columns = [x.strip().lower() for x in fields]
            label_column = columns.index("label") if "label" in columns else None
            pending = []
        else:
            label_column = 0 if len(fields) == PIXELS + 1 else None
            columns = (["label"] if label_column == 0 else []) + [f"pixel{k}" for k in range(PIXELS)]
            pending = [first]
        if len(fields) - (label_column is not None) != PIXELS:
            raise DataError(f"{where}: line {first[0]} has {len(fields)} {'columns' if header else 'values'}; "
                            f"expected a label then {PIXELS} pixels ({PIXELS + 1}), or {PIXELS} pixels without "
                            "a label (Kaggle's digit-recognizer layout; a header line is optional)")
        return _parse_rows(itertools.chain(pending, lines), columns, label_column)


def _parse_rows(lines: Iterator[tuple[int, str]], columns: list[str], label_column: int | None) -> Rows:
    """The rows of (line number, text) `lines`, CHUNK at a time: numpy parses a chunk at once; a chunk
    it refuses is read row by row to name the bad rows and keep the others."""
    pixel_columns = [k for k in range(len(columns)) if k != label_column]
    images, labels, rows, bad = [], [], [], []
    row = 0
    while chunk := list(itertools.islice(lines, CHUNK)):
        numbers = [row + 1 + k for k in range(len(chunk))]
        row += len(chunk)
        values = _parse_chunk([text for _, text in chunk], len(columns))
        if values is None:  # something in the chunk is wrong: find it row by row
            good, kept = [], []
            for (line, text), number in zip(chunk, numbers):
                fields = next(csv.reader([text]), [])
                reason = _row_problem(fields, columns, label_column)
                if reason:
                    bad.append((number, line, reason))
                else:
                    good.append([int(v) for v in fields])
                    kept.append(((line, text), number))
            chunk, numbers = [c for c, _ in kept], [n for _, n in kept]
            values = np.array(good, dtype=np.int64).reshape(len(good), len(columns))
        pixels = values[:, pixel_columns]
        label = values[:, label_column] if label_column is not None else np.zeros(len(values), np.int64)
        wrong = ((pixels < 0) | (pixels > 255)).any(axis=1) | (label < 0) | (label > MAX_LABEL)
        for k in np.flatnonzero(wrong):
            bad.append((numbers[k], chunk[k][0], _range_problem(pixels[k], label[k], columns, pixel_columns,
                                                                label_column)))
        keep = ~wrong
        images.append(pixels[keep].astype(np.uint8).reshape(-1, SIDE, SIDE))
        labels.append(label[keep])
        rows.append(np.asarray(numbers, dtype=np.int64)[keep])
    bad.sort()
    return Rows(_joined(images, np.zeros((0, SIDE, SIDE), np.uint8)),
                _joined(labels, np.zeros(0, np.int64)) if label_column is not None else None,
                _joined(rows, np.zeros(0, np.int64)), bad, row)


def _joined(parts: list[np.ndarray], empty: np.ndarray) -> np.ndarray:
    return np.concatenate(parts) if parts else empty


def _parse_chunk(texts: list[str], width: int) -> np.ndarray | None:
    """The chunk's rows as int64 (rows, width), or None when any value is missing or not a whole number."""
    try:
        # numpy 2.2 reads "1.5" as 1 with a DeprecationWarning (2.4 refuses it): as an error,
        # it sends the chunk to the row-by-row check, which names the value.
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            values = np.loadtxt(texts, delimiter=",", dtype=np.int64, comments=None, ndmin=2, quotechar='"')
    except (ValueError, DeprecationWarning):
        return None
    return values if values.shape[1] == width else None


WHOLE_NUMBER = re.compile(r"\s*[+-]?\d{1,18}\s*")  # what int64 holds, without Python's 1_000


def _row_problem(fields: list[str], columns: list[str], label_column: int | None) -> str:
    """Why a row cannot be read ("" when it can): the first missing, non-numeric or out-of-range value."""
    if len(fields) != len(columns):
        return f"{len(fields)} values, expected {len(columns)}"
    for k, (name, value) in enumerate(zip(columns, fields)):
        if not value.strip():
            return f"{name} is missing"
        if not WHOLE_NUMBER.fullmatch(value):
            kind = "not a whole number" if _is_number(value) else "not a number"
            return f"{name} is {display_name(value.strip())[:20]!r}, {kind}"
        number = int(value)
        if k == label_column and not 0 <= number <= MAX_LABEL:
            return f"label is {number}; labels are whole numbers from 0 to {MAX_LABEL} (each value is a class)"
        if k != label_column and not 0 <= number <= 255:
            return f"{name} is {number}, outside 0-255"
    return ""


def _range_problem(pixels: np.ndarray, label: int, columns: list[str], pixel_columns: list[int],
                   label_column: int | None) -> str:
    if label_column is not None and not 0 <= label <= MAX_LABEL:
        return f"label is {label}; labels are whole numbers from 0 to {MAX_LABEL} (each value is a class)"
    k = int(np.flatnonzero((pixels < 0) | (pixels > 255))[0])
    return f"{columns[pixel_columns[k]]} is {int(pixels[k])}, outside 0-255"


def _rows_named(bad: list[tuple[int, int, str]]) -> list[tuple[str, str]]:
    return [(f"row {row} (line {line})", reason) for row, line, reason in bad]


@dataclass
class Tables:
    """A CSV dataset: TRAIN.csv and, when given, TEST.csv."""

    train: Path
    test: Path | None = None

    def __post_init__(self) -> None:
        for path in filter(None, (self.train, self.test)):
            mode = _mode(path, "csv:")
            if not stat.S_ISREG(mode):
                raise DataError(f"csv:{display_name(path)}: is {file_kind(mode)}, not a CSV file")

    @property
    def where(self) -> str:
        return "csv:" + ",".join(display_name(p) for p in filter(None, (self.train, self.test)))

    def key(self, skip_bad: bool) -> str:
        digest = hashlib.sha256(f"mnistlab-own-csv-v{FORMAT};{HOLDOUT};{HOLDOUT_SEED};{skip_bad};"
                                f"{self.test is not None};".encode())
        for path in filter(None, (self.train, self.test)):
            try:
                digest.update(_file_digest(path))
            except OSError as e:
                raise DataError(f"{display_name(path)}: cannot read ({e.strerror or e})") from None
        return digest.hexdigest()[:32]

    def read(self, skip_bad: bool, progress: bool = False) -> Own:
        train = self._rows(self.train, skip_bad)
        if train.labels is None:
            raise DataError(f"{display_name(self.train)}: no label column ({PIXELS} values a row): nothing to learn "
                            "from; a training file has a label, then the pixels")
        classes, train_labels = _classes(train.labels)
        if len(classes) > MAX_CLASSES:
            raise DataError(f"{display_name(self.train)}: {len(classes)} distinct labels; at most {MAX_CLASSES} "
                            "classes (each label value is a class)")
        if len(classes) < 2:
            raise DataError(f"{display_name(self.train)}: every label is {classes[0] if classes else 'missing'}; "
                            "a dataset needs at least 2 classes")
        if self.test is None:
            test = _held_out(train_labels, _pixel_digests(train.images))
            arrays = _split_arrays(train.images, train_labels, test)
            layout = _holdout_text()
            overlap = []
        else:
            rows = self._rows(self.test, skip_bad)
            if rows.labels is None:
                raise DataError(f"{display_name(self.test)}: no label column ({PIXELS} values a row), so it cannot be "
                                "a test split: it is what `mnistlab predict RUN TEST.csv --kaggle --csv "
                                f"submission.csv` answers. Train on csv:{display_name(self.train)} alone: "
                                f"{_holdout_text()}")
            index = {int(value): k for k, value in enumerate(classes)}
            unknown = sorted({int(v) for v in rows.labels} - set(index))
            if unknown:
                raise DataError(f"{display_name(self.test)}: label{'s' if len(unknown) > 1 else ''} "
                                f"{', '.join(map(str, unknown[:10]))} only in the test file; every test class "
                                f"must be in {display_name(self.train)}")
            test_labels = np.array([index[int(v)] for v in rows.labels], dtype=np.int64)
            arrays = {"train_images": train.images, "train_labels": train_labels.astype(np.uint8),
                      "test_images": rows.images, "test_labels": test_labels.astype(np.uint8)}
            layout = f"test split from {display_name(self.test)}"
            overlap = _overlap(_pixel_digests(train.images), _pixel_digests(rows.images),
                               [f"{display_name(self.train)} row {r}" for r in train.rows],
                               [f"{display_name(self.test)} row {r}" for r in rows.rows])
        _check(self.where, classes, arrays["train_labels"].astype(np.int64), overlap, "the same 784 pixels")
        notes = [f"{display_name(self.train)}: CSV, {len(classes)} classes, {len(arrays['train_labels'])} training "
                 f"and {len(arrays['test_labels'])} test images, taken as they are; {layout}"]
        skipped = len(train.bad) + (len(rows.bad) if self.test is not None else 0)
        if skipped:
            notes.append(f"{skipped} bad row{'s' if skipped > 1 else ''} left out (--skip-bad)")
        return Own(arrays, classes, "; ".join(notes))

    def _rows(self, path: Path, skip_bad: bool) -> Rows:
        rows = read_csv(path)
        if rows.bad and not skip_bad:
            raise DataError(_bad_line(display_name(path), _rows_named(rows.bad), rows.total,
                                      "rows", "cannot be read"))
        return rows


def _classes(labels: np.ndarray) -> tuple[tuple[str, ...], np.ndarray]:
    """The class names (the distinct label values, as text, in numeric order) and each label's class index."""
    values, index = np.unique(labels, return_inverse=True)
    return tuple(str(int(v)) for v in values), index.astype(np.int64)
