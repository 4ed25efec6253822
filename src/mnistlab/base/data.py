"""Datasets: described as data, found on disk or downloaded safely, parsed once.

Each dataset is one entry of `DATASETS`: its class names, the official file
names with their published MD5 checksums (or the archive that holds them, with
its checksum), how its files differ from MNIST's (EMNIST's transposed images,
QMNIST's label table), and the mirrors that serve them. Your own data
(`folder:PATH`, `csv:TRAIN.csv[,TEST.csv]`) is read by own.py and cached here
the same way. `load(name)` returns the train and test splits as uint8 tensors on
the CPU; `to_device` is the one place where data moves to the training device.

Where files are looked for, in order:
  1. `--data-dir DIR` (`data_dir=` in Python) when given, and then only there;
  2. `$MNISTLAB_DATA`, the one data setting, which is either
     - a folder holding a dataset's four IDX files itself (e.g. ../shared/data/mnist):
       used for the dataset its test labels say it is (for any, when they are not
       recognised, as `--data-dir` would), or
     - a cache folder holding `<name>/` folders: `$MNISTLAB_DATA/<name>/`;
     unset (or a dataset folder), the platform cache (`~/.cache/mnistlab/<name>/`
     on Linux) takes its place. The cache folder is where downloads and the
     parsed cache go;
  3. copies already on the machine: torchvision's layout
     (`~/.pytorch/MNIST_data/<Name>/raw`, where the course notebook downloads,
     and `./data/<Name>/raw`) and Debian's `/usr/share/datasets/<name>`.
Local files are checked by structure, not checksum: they may be re-compressed.
Downloads are checked against the official checksum before they are kept.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import hashlib
import io
import json
import math
import os
import stat
import struct
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import platformdirs
import torch

from .. import __version__
from . import names, own
from .synthetic import VERSION, generate
from .errors import DataError, WriteError
from .files import NotRegularFile, atomic_path, file_kind, hash_file, open_regular, read_regular

ROLES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    classes: tuple[str, ...]
    # role -> (official file name, MD5 of the official file; "" for a file taken from `archive`)
    files: dict[str, tuple[str, str]] = field(default_factory=dict)
    mirrors: tuple[str, ...] = ()
    torchvision_name: str = ""
    homepage: str = ""
    # (file name, MD5) of the official archive (a zip) holding the files under `archive_folder`
    archive: tuple[str, str] | None = None
    archive_folder: str = ""
    folder: str = ""  # the download folder's name under the cache (default: `name`); shared by EMNIST's splits
    transposed: bool = False  # images stored column by column (EMNIST): turned upright when read
    label_column: int | None = None  # labels stored as a table (QMNIST: N x 8 int32): the class's column
    label_offset: int = 0  # the first class's label in the files (EMNIST letters: 1)


_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def _files(*md5s: str) -> dict[str, tuple[str, str]]:
    return {role: (_IDX_FILES[role], md5) for role, md5 in zip(ROLES, md5s)}


DIGITS = tuple(str(d) for d in range(10))
# EMNIST's official archive (NIST), as torchvision downloads it: every split's IDX files, gzipped,
# in its folder gzip/. Images are stored transposed. The balanced split merges the 15 letters
# whose upper and lower case look alike (c i j k l m o p s u v w x y z) into the capital.
EMNIST_ARCHIVE = ("gzip.zip", "58c8d27c78d21e728a6bc7b3cc06412e")
EMNIST_MIRRORS = ("https://biometrics.nist.gov/cs_links/EMNIST/",
                  "https://www.itl.nist.gov/iaui/vip/cs_links/EMNIST/")
EMNIST_CLASSES = {
    "digits": DIGITS,
    # labels 1-26 in the files; each class holds both cases of its letter (torchvision's names)
    "letters": tuple("abcdefghijklmnopqrstuvwxyz"),
    "balanced": DIGITS + tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + tuple("abdefghnqrt"),
}
EMNIST_TITLES = {"digits": "EMNIST digits (NIST handwritten digits, 280,000 images)",
                 "letters": "EMNIST letters (26 classes, each holding both cases of its letter)",
                 "balanced": "EMNIST balanced (digits and letters, 47 classes of equal size)"}


def _emnist(split: str) -> DatasetSpec:
    names_ = {role: f"emnist-{split}-{'train' if role.startswith('train') else 'test'}-"
                    f"{'images-idx3' if role.endswith('images') else 'labels-idx1'}-ubyte.gz" for role in ROLES}
    return DatasetSpec(
        name=f"emnist-{split}", title=EMNIST_TITLES[split], classes=EMNIST_CLASSES[split],
        files={role: (fname, "") for role, fname in names_.items()}, mirrors=EMNIST_MIRRORS,
        torchvision_name="EMNIST", homepage="https://www.nist.gov/itl/products-and-services/emnist-dataset",
        archive=EMNIST_ARCHIVE, archive_folder="gzip/", folder="emnist", transposed=True,
        label_offset=1 if split == "letters" else 0)


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST handwritten digits",
        classes=DIGITS,
        files=_files(
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "d53e105ee54ea40749a09fcbcd1e9432",
            "9fb629c4189551a2d022fa330f9573f3",
            "ec29112dd5afa0611ce80d1b7f02629c",
        ),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            # The original host; it now often answers bots with an HTML page.
            "http://yann.lecun.com/exdb/mnist/",
        ),
        torchvision_name="MNIST",
        homepage="http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST (Zalando article images)",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        files=_files(
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "25c81989df183df01b3e8a0aad5dffbe",
            "bef4ecab320f06d8554ea6380940ec79",
            "bb300cfdad3c16e7a12a480ee83cd310",
        ),
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        torchvision_name="FashionMNIST",
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        title="Kuzushiji-MNIST (cursive Japanese characters)",
        classes=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
        files=_files(
            "bdb82020997e1d708af4cf47b453dcf7",
            "e144d726b3acfaa3e44228e80efcd344",
            "5c965bf0a639b31b8f53240b1b52f4d7",
            "7320c461ea6c1c855c0b718fb2a4b134",
        ),
        # The publisher (ROIS-CODH) is the only host; its https and http
        # endpoints fail independently (certificates, redirects).
        mirrors=(
            "https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
            "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        ),
        torchvision_name="KMNIST",
        homepage="https://github.com/rois-codh/kmnist",
    ),
    "qmnist": DatasetSpec(
        name="qmnist",
        title="QMNIST (MNIST's digits reconstructed from NIST, with a 60,000-image test split)",
        classes=DIGITS,
        files={
            "train_images": ("qmnist-train-images-idx3-ubyte.gz", "ed72d4157d28c017586c42bc6afe6370"),
            "train_labels": ("qmnist-train-labels-idx2-int.gz", "0058f8dd561b90ffdd0f734c6a30e5e4"),
            "test_images": ("qmnist-test-images-idx3-ubyte.gz", "1394631089c404de565df7b7aeaf9412"),
            "test_labels": ("qmnist-test-labels-idx2-int.gz", "5b5b05890a5e13444e108efe57b788aa"),
        },
        # The publisher's repository is the only host; GitHub serves it under two names.
        mirrors=("https://raw.githubusercontent.com/facebookresearch/qmnist/master/",
                 "https://github.com/facebookresearch/qmnist/raw/master/"),
        torchvision_name="QMNIST",
        homepage="https://github.com/facebookresearch/qmnist",
        label_column=0,  # the class; then the NIST series, writer, ... (8 int32 columns)
    ),
    "emnist-digits": _emnist("digits"),
    "emnist-letters": _emnist("letters"),
    "emnist-balanced": _emnist("balanced"),
    "synthetic": DatasetSpec(
        name="synthetic",
        title="Digits rendered from matplotlib's fonts (no files, no network)",
        classes=DIGITS,
    ),
}

# IDX type codes: 0x08 unsigned byte (images, labels), 0x0C big-endian int32 (QMNIST's label
# table); the last byte of the magic is the number of dimensions.
IDX_UBYTE = 0x08
IDX_INT32 = 0x0C
IDX_TYPES = {IDX_UBYTE: np.dtype(np.uint8), IDX_INT32: np.dtype(">i4")}
IMAGE_SHAPE = (28, 28)


@dataclass
class Split:
    images: torch.Tensor  # (N, 28, 28) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    spec: DatasetSpec
    train: Split
    test: Split
    source: str  # where the data came from, for people
    # What the files were recognised as (`identify`): (dataset name, how), or None when unknown.
    identity: tuple[str, str] | None = None
    fingerprint: str = ""  # of its content (`content_fingerprint`), computed when it was loaded

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(names.problem(name) or f"{name!r} is your own data, not a dataset known by name")
    return DATASETS[name]


# ---------------------------------------------------------------------------
# IDX format

def _read_raw(path: Path) -> bytes:
    try:
        return read_regular(path)  # a FIFO or a device named like an IDX file is refused, never opened
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _open_bytes(path: Path) -> bytes:
    return _decompress(_read_raw(path), path)


# The most bytes of data an IDX file may declare: 1.3 million 28x28 images, 20 times MNIST's
# training set. A gzip file expands up to a thousand times, so without a bound a few
# megabytes of hostile .gz could ask for gigabytes.
MAX_IDX_BYTES = 2**30


def _decompress(raw: bytes, where: Path) -> bytes:
    """The bytes of an IDX file, gunzipped when they start with gzip's magic number.

    The header is decompressed first and the data after it only up to the size the
    header declares (plus one byte, to notice more): memory stays bounded by
    MAX_IDX_BYTES however much the file would expand.
    """
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            head = f.read(4)
            if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in IDX_TYPES or not 1 <= head[3] <= 3:
                return head + f.read(64)  # not an IDX header: parse_idx says so
            dims = f.read(4 * head[3])
            if len(dims) < 4 * head[3]:
                return head + dims
            declared = math.prod(struct.unpack(f">{head[3]}I", dims)) * IDX_TYPES[head[2]].itemsize
            if declared > MAX_IDX_BYTES:
                raise DataError(f"{where}: the header declares {declared} bytes of data, more than the "
                                f"{MAX_IDX_BYTES} an IDX file may hold here")
            body = f.read(declared + 1)
            if len(body) > declared:
                shape = "x".join(map(str, struct.unpack(f">{head[3]}I", dims)))
                raise DataError(f"{where}: header says {shape} = {declared} bytes of data but the file holds more")
            return head + dims + body
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{where}: corrupt or truncated gzip file ({e})") from None


def parse_idx(data: bytes, where: str = "IDX data") -> np.ndarray:
    """Decode IDX bytes (unsigned bytes, or QMNIST's int32) into a numpy array, checking the header."""
    if len(data) < 4:
        raise DataError(f"{where}: too short to be an IDX file ({len(data)} bytes)")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or not 1 <= ndim <= 3:
        raise DataError(f"{where}: not an IDX file (magic number 0x{data[:4].hex()}, "
                        "expected 0x00000801 for labels or 0x00000803 for images)")
    if code not in IDX_TYPES:
        raise DataError(f"{where}: IDX type code 0x{code:02x} is not supported "
                        f"(expected 0x{IDX_UBYTE:02x}, unsigned bytes, or 0x{IDX_INT32:02x}, int32)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    # In Python integers: sizes up to (2^32-1)^3 cannot wrap around (numpy's int64 product of
    # 2^31 x 2^31 x 4 is 0), so a hostile header is refused before anything is allocated.
    dtype = IDX_TYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(f"{where}: header says {'x'.join(map(str, shape))} = {expected} "
                        f"bytes of data but the file holds {len(data) - header}")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    return parse_idx(_open_bytes(path), str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """IDX bytes of `array`: big-endian int32 for an int32 array (QMNIST's labels), else unsigned bytes."""
    array = np.asarray(array)
    code = IDX_INT32 if array.dtype.kind == "i" and array.dtype.itemsize == 4 else IDX_UBYTE
    array = np.ascontiguousarray(array, dtype=IDX_TYPES[code])
    header = struct.pack(">HBB", 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write `array` as an IDX file (gzip-compressed when the name ends in .gz)."""
    path = Path(path)
    data = encode_idx(array)
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=1, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def validate_split(images: np.ndarray, labels: np.ndarray, num_classes: int,
                   images_file: str, labels_file: str) -> None:
    """Check that an images file and its labels file form a usable split; the error names the file."""
    height, width = IMAGE_SHAPE
    if images.ndim != 3:
        raise DataError(f"{images_file}: images must have 3 dimensions (N, {height}, {width}), "
                        f"found {images.ndim}")
    if tuple(images.shape[1:]) != IMAGE_SHAPE:
        raise DataError(f"{images_file}: images are {images.shape[1]}x{images.shape[2]}, "
                        f"expected {height}x{width}")
    if labels.ndim != 1:
        raise DataError(f"{labels_file}: labels must have 1 dimension, found {labels.ndim}")
    if len(images) != len(labels):
        raise DataError(f"{images_file} holds {len(images)} images but {labels_file} holds {len(labels)} labels")
    if len(labels) == 0:
        raise DataError(f"{images_file}: the split is empty (0 images)")
    top = int(labels.max())
    if top >= num_classes:
        raise DataError(f"{labels_file}: label {top} out of range (the dataset has {num_classes} classes)")


# ---------------------------------------------------------------------------
# Which dataset a folder holds
#
# MNIST, Fashion-MNIST and KMNIST share their file names, sizes and format, so the
# files of one pass every check made for another. Their test labels tell them
# apart: the SHA-256 of the 10,000 labels as bytes (uint8, in file order: the same
# whatever the compression) was computed from MNIST and from Debian's
# dataset-fashion-mnist. KMNIST's files were not available to compute its own, so
# it is recognised by the MD5 of its official labels file (what a download gets),
# or else by its label distribution.

TEST_LABELS_SHA256 = {
    "mnist": "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
    "fashion-mnist": "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9",
}
# Fashion-MNIST and KMNIST have 1,000 test images of each of their 10 classes;
# MNIST's classes have from 892 (5) to 1,135 (1).
BALANCED_PER_CLASS = 1000


def identify(test_labels: np.ndarray, labels_md5: str | None = None) -> tuple[str, str] | None:
    """(dataset name, how it was recognised) for a test split's labels, or None when they are unknown.

    `labels_md5` is the MD5 of the test-labels file as stored, compared with the
    official downloads' checksums.
    """
    labels = np.ascontiguousarray(test_labels, dtype=np.uint8)
    digest = hashlib.sha256(labels.tobytes()).hexdigest()
    for name, known in TEST_LABELS_SHA256.items():
        if digest == known:
            return name, "the SHA-256 of its test labels"
    for spec in DATASETS.values():
        if labels_md5 is not None and spec.files and labels_md5 == spec.files["test_labels"][1]:
            return spec.name, "the MD5 of its official test-labels file"
    counts = np.bincount(labels, minlength=10)
    if len(counts) == 10 and (counts == BALANCED_PER_CLASS).all():
        return "kmnist", (f"its test labels: {BALANCED_PER_CLASS} of each class, as in KMNIST, and not "
                          "Fashion-MNIST's")
    return None


def mismatch(dataset: Dataset, expected: str) -> str | None:
    """What is wrong when `dataset`'s files are recognised as another dataset than `expected`, else None.

    Files that are not recognised (your own, or a subset) are never a mismatch.
    """
    if dataset.identity is None or dataset.identity[0] == expected:
        return None
    found, how = dataset.identity
    return f"{dataset.source} holds {found} (recognised by {how}), not {expected}"


# ---------------------------------------------------------------------------
# Where files live

DATA_VARIABLE = "MNISTLAB_DATA"
# The notebooks' name for the setting before MNISTLAB_DATA was the one: still read, with a note.
DEPRECATED_DATA_VARIABLE = "MNISTLAB_DATA_DIR"
_noted: set[str] = set()


def data_setting() -> Path | None:
    """The folder `$MNISTLAB_DATA` names (else the deprecated `$MNISTLAB_DATA_DIR`), or None when unset."""
    value, old = os.environ.get(DATA_VARIABLE), os.environ.get(DEPRECATED_DATA_VARIABLE)
    if old and DEPRECATED_DATA_VARIABLE not in _noted:
        _noted.add(DEPRECATED_DATA_VARIABLE)
        print(f"mnistlab: note: {DEPRECATED_DATA_VARIABLE} is deprecated"
              + (f" and ignored, since {DATA_VARIABLE} is set" if value else "")
              + f"; set {DATA_VARIABLE} instead (a folder of IDX files, or a cache folder)", file=sys.stderr)
    value = value or old
    return Path(value).expanduser() if value else None


def _idx_files_anywhere(folder: Path) -> dict[str, Path] | None:
    """The four files of the first dataset whose file names `folder` holds itself, or None."""
    for spec in DATASETS.values():
        try:
            found = find_files(spec, folder) if spec.files else None
        except DataError:
            found = None
        if found is not None:
            return found
    return None


def setting_folder() -> Path | None:
    """`$MNISTLAB_DATA` when it is a dataset folder (it holds four IDX files itself), else None."""
    folder = data_setting()
    return folder if folder is not None and _idx_files_anywhere(folder) is not None else None


def cache_root() -> Path:
    """`$MNISTLAB_DATA` when it is a cache folder, else the platform's user cache directory."""
    folder = data_setting()
    if folder is not None and setting_folder() is None:
        return folder
    return Path(platformdirs.user_cache_dir("mnistlab"))


def identify_files(paths: dict[str, Path]) -> tuple[str, str] | None:
    """What four IDX files are (`identify` on their test labels), or None when they are not recognised."""
    labels = paths["test_labels"]
    try:
        stat_result = os.stat(labels)
    except OSError as e:
        raise DataError(f"{labels}: cannot read ({e.strerror or e})") from None
    return _identify_labels_file(str(labels), stat_result.st_size, stat_result.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _identify_labels_file(path: str, size: int, mtime_ns: int) -> tuple[str, str] | None:
    # Cached by size and time: a command asks several times about the same folder (10 kB to read each time).
    try:
        md5 = _md5(Path(path))
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    return identify(read_idx(path), md5)


def serves(folder: Path, spec: DatasetSpec) -> bool:
    """Whether `folder` holds `spec`'s four files and they are not recognised as another dataset."""
    found = find_files(spec, folder) if spec.files else None
    if found is None:
        return False
    try:
        identity = identify_files(found)
    except DataError:
        return True  # damaged files: loading them names the problem
    return identity is None or identity[0] == spec.name


def download_dir(spec: DatasetSpec) -> Path:
    return cache_root() / (spec.folder or spec.name)


def candidate_dirs(spec: DatasetSpec) -> list[Path]:
    """Folders searched for existing copies, in order."""
    folder = setting_folder()
    dirs = [folder] if folder is not None and serves(folder, spec) else []
    dirs.append(download_dir(spec))
    if spec.torchvision_name:
        # torchvision keeps <root>/<Name>/raw; the notebook's root is ~/.pytorch/MNIST_data
        # (its Fashion-MNIST sequel uses ~/.pytorch/F_MNIST_data), so look under every root there.
        pytorch = Path.home() / ".pytorch"
        dirs.append(pytorch / "MNIST_data" / spec.torchvision_name / "raw")
        dirs += [d for d in sorted(pytorch.glob(f"*/{spec.torchvision_name}/raw")) if d not in dirs]
        dirs.append(Path("data") / spec.torchvision_name / "raw")
    dirs.append(Path("/usr/share/datasets") / (spec.folder or spec.name))
    if spec.archive_folder:
        # the archive unpacked by hand: its folder (gzip/ for EMNIST) inside each of these
        dirs = [d for folder in dirs for d in (folder, folder / spec.archive_folder.strip("/"))]
    return dirs


def _find_file(folder: Path, filename: str) -> Path | None:
    """The file `filename` (or its uncompressed name) in `folder`, or None.

    A FIFO, device or folder of that name is a DataError naming it (never opened);
    so is a folder that cannot be read (a PermissionError from the OS).
    """
    for name in (filename, filename.removesuffix(".gz")):
        path = folder / name
        try:
            mode = os.stat(path).st_mode
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as e:
            raise DataError(f"{folder}: cannot read ({e.strerror or e})") from None
        if not stat.S_ISREG(mode):
            raise DataError(f"{path}: is {file_kind(mode)}, not a regular file; put the IDX file itself there")
        return path
    return None


def find_files(spec: DatasetSpec, folder: Path) -> dict[str, Path] | None:
    """The four files in `folder` (gz or raw), or None if any is missing; DataError if unreadable."""
    found = {role: _find_file(folder, fname) for role, (fname, _) in spec.files.items()}
    if all(found.values()):
        return found  # type: ignore[return-value]
    return None


def _data_dir(data_dir: str | os.PathLike) -> Path:
    """`--data-dir` as a Path, if it is a folder; else DataError saying what it is."""
    folder = Path(data_dir).expanduser()
    try:
        mode = os.stat(folder).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise DataError(f"--data-dir {folder}: no such folder") from None
    except OSError as e:
        raise DataError(f"--data-dir {folder}: cannot read ({e.strerror or e})") from None
    if not stat.S_ISDIR(mode):
        raise DataError(f"--data-dir {folder}: is {file_kind(mode)}, not a folder")
    return folder


def locate(spec: DatasetSpec, data_dir: str | os.PathLike | None = None) -> dict[str, Path] | None:
    """The four files: in `data_dir` only when given, else in the first usual place that has them all.

    A usual place that cannot be read is passed over (it is not the user's choice);
    `data_dir` that cannot be read is a DataError.
    """
    if data_dir is not None:
        folder = _data_dir(data_dir)
        found = find_files(spec, folder)
        if found is None:
            missing = [fname for fname, _ in spec.files.values() if not _find_file(folder, fname)]
            raise DataError(f"--data-dir {folder}: missing {', '.join(missing)} "
                            "(the .gz or uncompressed IDX files are both accepted)")
        return found
    for folder in candidate_dirs(spec):
        try:
            found = find_files(spec, folder)
        except DataError:
            continue
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------------
# Download

USER_AGENT = f"mnistlab/{__version__} (+https://pypi.org/project/mnistlab/)"


ZIP_MAGIC = b"PK\x03\x04"
GZIP_MAGIC = b"\x1f\x8b"


def _fetch(url: str, dest: Path, md5: str, timeout: float, progress: bool) -> None:
    """Download `url` to `dest` through a temporary file; raise with a short reason."""
    magic, kind = (ZIP_MAGIC, "zip") if dest.suffix == ".zip" else (GZIP_MAGIC, "gzip")
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        ctype = response.headers.get("Content-Type", "")
        if "text/html" in ctype:
            raise ValueError(f"served an HTML page ({ctype}) instead of the file")
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        digest = hashlib.md5()
        received = 0
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, leave=False,
                   disable=not (progress and sys.stderr.isatty()), file=sys.stderr)
        with atomic_path(dest) as tmp, open(tmp, "wb") as out, bar:
            first = True
            while chunk := response.read(1 << 16):
                if first and not chunk.startswith(magic):
                    if chunk.lstrip()[:1] == b"<":
                        raise ValueError("served an HTML page instead of the file")
                    raise ValueError(f"the response is not a {kind} file")
                first = False
                digest.update(chunk)
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            out.flush()
            if total is not None and received != total:
                raise ValueError(f"incomplete: {received} of {total} bytes")
            if digest.hexdigest() != md5:
                raise ValueError(f"checksum mismatch (md5 {digest.hexdigest()}, expected {md5})")


def _reason(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError) and isinstance(e.reason, TimeoutError):
        return "timed out while connecting"
    if isinstance(e, urllib.error.URLError):
        return f"cannot connect ({e.reason})"
    if isinstance(e, TimeoutError):
        return "timed out"
    return str(e) or type(e).__name__


def download(spec: DatasetSpec, dest_dir: Path | None = None, mirrors: tuple[str, ...] | None = None,
             timeout: float = 30.0, progress: bool = True) -> dict[str, Path]:
    """Fetch every missing official file into `dest_dir`, trying each mirror in turn; for a dataset
    shipped in an archive, fetch the archive (kept, for the other splits it holds) and unpack the files.

    `timeout` (seconds) bounds each connection attempt and each read, not a whole file.
    """
    dest_dir = Path(dest_dir) if dest_dir is not None else download_dir(spec)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the download folder {dest_dir} ({e.strerror or e}); "
                        "set MNISTLAB_DATA to a writable folder or pass --data-dir DIR") from None
    mirrors = list(spec.mirrors if mirrors is None else mirrors)
    if spec.archive is not None:
        found = find_files(spec, dest_dir)
        if found is not None:
            return found
        archive = _fetch_any(spec, *spec.archive, dest_dir, mirrors, timeout, progress)
        return _unpack(spec, archive, dest_dir)
    return {role: _fetch_any(spec, fname, md5, dest_dir, mirrors, timeout, progress)
            for role, (fname, md5) in spec.files.items()}


def _fetch_any(spec: DatasetSpec, fname: str, md5: str, dest_dir: Path, mirrors: list[str], timeout: float,
               progress: bool) -> Path:
    """`dest_dir/fname`, already there with its official checksum or downloaded from the first mirror that
    serves it; the mirror that worked moves to the front of `mirrors` (a dead one costs a timeout each)."""
    dest = dest_dir / fname
    if _downloaded(dest, md5):
        return dest
    attempts = []
    for mirror in mirrors:
        url = mirror + fname
        try:
            _fetch(url, dest, md5, timeout, progress)
            mirrors.remove(mirror)
            mirrors.insert(0, mirror)
            return dest
        except Exception as e:  # noqa: BLE001 - every failure means: next mirror
            attempts.append(f"  {url}: {_reason(e)}")
    files = ", ".join(f for f, _ in spec.files.values())
    offline = f"{spec.archive[0]}, or the files {files}" if spec.archive else f"the files {files}"
    raise DataError(
        f"could not download {spec.name} file {fname}; every mirror failed:\n"
        + "\n".join(attempts)
        + f"\nTo continue offline, put {offline}"
        + f"\n(.gz or uncompressed) in {dest_dir}, or pass --data-dir DIR pointing at them,"
        + "\nor try everything without data: --dataset synthetic")


def _unpack(spec: DatasetSpec, archive: Path, dest_dir: Path) -> dict[str, Path]:
    """Copy the dataset's files out of its official archive (checksum already checked) into `dest_dir`."""
    paths = {}
    try:
        with open_regular(archive) as f, zipfile.ZipFile(f) as zf:
            for role, (fname, _) in spec.files.items():
                member = spec.archive_folder + fname
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise DataError(f"{archive}: {member} is missing from the archive") from None
                if info.file_size > MAX_IDX_BYTES:  # a gzip file inside; its own size is bounded when parsed
                    raise DataError(f"{archive}: {member} is {info.file_size} bytes, more than an IDX file may be")
                paths[role] = dest_dir / fname
                with atomic_path(paths[role]) as tmp:
                    tmp.write_bytes(zf.read(info))  # zipfile checks each member's CRC-32
    except (OSError, zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise DataError(f"{archive}: corrupt archive ({e}); delete it to download it again") from None
    return paths


def _downloaded(dest: Path, md5: str) -> bool:
    """True if `dest` is already the official file; DataError if the download folder cannot be read."""
    try:
        return _md5(dest) == md5
    except (FileNotFoundError, NotRegularFile):
        return False  # not there yet, or something else in the way: the download replaces it
    except OSError as e:
        raise DataError(f"cannot read the download folder {dest.parent} ({e.strerror or e}); "
                        "set MNISTLAB_DATA to a readable folder or pass --data-dir DIR") from None


def _md5(path: Path) -> str:
    return hash_file(path, "md5").hexdigest()


# ---------------------------------------------------------------------------
# Parsed cache: the decoded uint8 arrays, keyed by the content of the source files.
#
# The key is a SHA-256 of the four files' bytes as stored (about 11 MB of gzip for
# MNIST), so a dataset read from two folders is cached once, and a changed file
# gets a new entry. Cached arrays are validated on every load exactly like parsed
# files: an entry that fails is ignored and rewritten, never trusted. Your own data's
# entries also hold its class names and description ("own": JSON as bytes); their
# key hashes every file's bytes too (own.py).

CACHE_FORMAT = 2  # bump when what an entry holds changes: older entries are then never read
FINGERPRINT = "fingerprint"  # an entry's content fingerprint, stored beside its arrays and checked on every load


def parsed_cache_dir() -> Path:
    return cache_root() / "parsed"


def _read_sources(spec: DatasetSpec, paths: dict[str, Path]) -> tuple[str, dict[str, bytes]]:
    """(content key, the files' bytes): each file is read once, for the key and, if needed, for parsing."""
    digest = hashlib.sha256(f"mnistlab-parsed-v{CACHE_FORMAT};".encode())
    if spec.transposed or spec.label_column is not None or spec.label_offset:  # what is made of the same bytes
        digest.update(f"{spec.transposed};{spec.label_column};{spec.label_offset};".encode())
    contents = {}
    for role in ROLES:
        contents[role] = _read_raw(paths[role])
        digest.update(f"{role}:{len(contents[role])};".encode())
        digest.update(contents[role])
    return digest.hexdigest()[:32], contents


def _validate_arrays(spec: DatasetSpec, arrays: dict[str, np.ndarray], names: dict[str, str]) -> None:
    """The checks every split passes, from files or from the cache; `names` says where each array came from."""
    for role in ROLES:
        if arrays[role].dtype != np.uint8:
            raise DataError(f"{names[role]}: holds {arrays[role].dtype} values, expected unsigned bytes")
    for split in ("train", "test"):
        validate_split(arrays[f"{split}_images"], arrays[f"{split}_labels"], len(spec.classes),
                       names[f"{split}_images"], names[f"{split}_labels"])


def content_fingerprint(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 of the four arrays' bytes (labels as unsigned bytes): the same data gives the same fingerprint
    whatever folder or compression it came from; one changed label gives another."""
    digest = hashlib.sha256()
    for role in ROLES:
        digest.update(np.ascontiguousarray(arrays[role], dtype=np.uint8).data)
    return digest.hexdigest()


def _entry(path: Path, z: Any) -> dict[str, np.ndarray]:
    """The arrays of an opened cache entry, with their fingerprint, if they are what was stored (ValueError
    otherwise: an entry edited after it was written, even to labels that are in range, is never used)."""
    arrays = {role: z[role] for role in ROLES}
    stored = str(z[FINGERPRINT])
    if content_fingerprint(arrays) != stored:
        raise ValueError(f"{path}: its arrays are not what was stored")
    return {**arrays, FINGERPRINT: np.array(stored)}


def _load_cached(key: str, spec: DatasetSpec) -> dict[str, np.ndarray] | None:
    """The cached arrays for `key` if the entry exists, holds what was stored and passes validation, else None."""
    path = parsed_cache_dir() / f"{key}.npz"
    try:
        with open_regular(path) as f, np.load(f, allow_pickle=False) as z:
            arrays = _entry(path, z)
        _validate_arrays(spec, arrays, {role: f"{path} [{role}]" for role in ROLES})
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile, MemoryError, DataError):
        return None  # unreadable, edited or invalid: parse the source again and overwrite the entry
    return arrays


def _store_cached(key: str, arrays: dict[str, np.ndarray]) -> None:
    """Write a cache entry: the arrays and their content fingerprint (computed once, kept in `arrays` too)."""
    arrays.setdefault(FINGERPRINT, np.array(content_fingerprint(arrays)))
    try:
        with atomic_path(parsed_cache_dir() / f"{key}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    except (OSError, WriteError):
        pass  # a read-only or full cache only costs speed


def _cache_files() -> list[Path]:
    """The entries and the leftovers of interrupted writes (`.<name>.npz.*.tmp`) in the parsed cache."""
    folder = parsed_cache_dir()
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        raise DataError(f"parsed cache {folder}: cannot read ({e.strerror or e})") from None
    return sorted(Path(e.path) for e in entries
                  if e.is_file(follow_symlinks=False)
                  and (e.name.endswith(".npz") or (e.name.startswith(".") and e.name.endswith(".tmp"))))


def cache_usage() -> dict[str, Any]:
    """Where the parsed cache is, how many entries it holds and their total size in bytes
    (and "problem", when the folder cannot be read)."""
    usage: dict[str, Any] = {"folder": str(parsed_cache_dir()), "files": 0, "bytes": 0}
    try:
        files = _cache_files()
    except DataError as e:
        return usage | {"problem": str(e)}
    sizes = []
    for path in files:
        with contextlib.suppress(OSError):  # removed meanwhile by another process
            sizes.append(path.stat().st_size)
    return usage | {"files": len(sizes), "bytes": sum(sizes)}


def clear_cache() -> dict[str, Any]:
    """Delete the parsed cache's entries (never the downloaded IDX files); return what was freed."""
    freed, removed = 0, 0
    for path in _cache_files():
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue  # removed meanwhile by another process
        except OSError as e:
            raise DataError(f"cannot remove {path} ({e.strerror or e}); "
                            f"removed {removed} files ({freed} bytes) before it") from None
        freed += size
        removed += 1
    with contextlib.suppress(OSError):
        parsed_cache_dir().rmdir()  # only if empty: a folder holding anything else is left alone
    return {"folder": str(parsed_cache_dir()), "files": removed, "bytes": freed}


def _conform(spec: DatasetSpec, arrays: dict[str, np.ndarray], names_: dict[str, str]) -> dict[str, np.ndarray]:
    """The official files' arrays as every dataset is kept: upright uint8 images, one uint8 label per
    image counted from 0 (EMNIST's images turned upright, QMNIST's class column, letters from 1 to 0)."""
    out = {}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        where = names_[f"{split}_labels"]
        if images.dtype != np.uint8:
            raise DataError(f"{names_[f'{split}_images']}: holds {images.dtype} values, expected unsigned bytes")
        if spec.transposed and images.ndim == 3:
            images = np.ascontiguousarray(images.transpose(0, 2, 1))
        if spec.label_column is not None:
            if labels.ndim != 2 or labels.shape[1] <= spec.label_column:
                raise DataError(f"{where}: labels must be a table with a row per image and the class in column "
                                f"{spec.label_column} ({spec.name}'s layout), found shape {labels.shape}")
            labels = labels[:, spec.label_column]
        elif labels.dtype != np.uint8:
            raise DataError(f"{where}: holds {labels.dtype} values, expected unsigned bytes")
        labels = labels.astype(np.int64) - spec.label_offset
        if labels.size and not 0 <= labels.min() <= labels.max() <= 255:
            worst = int(labels.min() if labels.min() < 0 else labels.max()) + spec.label_offset
            raise DataError(f"{where}: label {worst} out of range (the dataset has {len(spec.classes)} classes"
                            + (f", labelled from {spec.label_offset})" if spec.label_offset else ")"))
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels.astype(np.uint8)
    return out


def read_files(spec: DatasetSpec, paths: dict[str, Path], use_cache: bool = True) -> dict[str, np.ndarray]:
    """Parse and validate the four files, or take them from the parsed cache (validated the same way)."""
    key, contents = _read_sources(spec, paths)
    arrays = _load_cached(key, spec) if use_cache else None
    if arrays is None:
        where = {role: str(paths[role]) for role in ROLES}
        parsed = {role: parse_idx(_decompress(contents[role], paths[role]), where[role]) for role in ROLES}
        arrays = _conform(spec, parsed, where)
        _validate_arrays(spec, arrays, where)
        if use_cache:
            _store_cached(key, arrays)
    return arrays


def _to_dataset(spec: DatasetSpec, arrays: dict[str, np.ndarray], source: str) -> Dataset:
    def split(name: str) -> Split:
        return Split(torch.from_numpy(np.array(arrays[f"{name}_images"], copy=True)),
                     torch.from_numpy(arrays[f"{name}_labels"].astype(np.int64)))

    known = arrays.get(FINGERPRINT)
    return Dataset(spec, split("train"), split("test"), source,
                   fingerprint=str(known) if known is not None else content_fingerprint(arrays))


def load(name: str = "mnist", data_dir: str | os.PathLike | None = None, download_missing: bool = True,
         progress: bool = True, any_data: bool = False, skip_bad: bool = False) -> Dataset:
    """The dataset `name` as uint8 tensors, from disk, the cache, or a download; or your own data
    (`folder:PATH`, `csv:TRAIN.csv[,TEST.csv]`: see `load_own`).

    Files recognised as another dataset (`identify`) are a DataError, unless `any_data`.
    """
    if names.own(name) is not None:
        return load_own(name, data_dir, skip_bad=skip_bad, progress=progress)
    spec = get_spec(name)
    if name == "synthetic":
        if data_dir is not None:
            raise DataError("--data-dir does not apply to --dataset synthetic (it needs no files)")
        # Rendering takes seconds; the result only depends on the generator's version.
        import matplotlib

        key = f"synthetic-v{VERSION}-matplotlib{matplotlib.__version__}"  # the fonts come from matplotlib
        arrays = _load_cached(key, spec)
        if arrays is None:
            arrays = generate()
            _store_cached(key, arrays)
        return _to_dataset(spec, arrays, "rendered from matplotlib fonts")
    paths = locate(spec, data_dir)
    if paths is None:
        if not download_missing and _kept_archive(spec) is None:
            raise DataError(f"{name} not found in {', '.join(map(str, candidate_dirs(spec)))}")
        paths = download(spec, progress=progress)  # or unpacked from the archive kept by an earlier download
    arrays = read_files(spec, paths)
    dataset = _to_dataset(spec, arrays, str(paths["train_images"].parent))
    try:
        labels_md5 = _md5(paths["test_labels"])
    except OSError as e:
        raise DataError(f"{paths['test_labels']}: cannot read ({e.strerror or e})") from None
    dataset.identity = identify(arrays["test_labels"], labels_md5)
    problem = mismatch(dataset, name)
    if problem and not any_data:
        raise DataError(f"{problem}; use --dataset {dataset.identity[0]} for these files, "
                        f"or point --data-dir at the {name} files")
    return dataset


def holds(folder: str | os.PathLike) -> dict[str, Any]:
    """What a data folder holds, for people: {"folder", "datasets": the names `train` takes it as,
    "recognised": the name its test labels give or None, "how", "missing": files absent for MNIST's names}."""
    folder = Path(folder)
    paths = _idx_files_anywhere(folder)
    if paths is None:
        missing = [fname for fname, _ in DATASETS["mnist"].files.values() if not _find_file(folder, fname)]
        return {"folder": str(folder), "datasets": [], "recognised": None, "how": None, "missing": missing}
    identity = identify_files(paths)
    names = [spec.name for spec in DATASETS.values() if spec.files and serves(folder, spec)]
    return {"folder": str(folder), "datasets": names, "recognised": identity and identity[0],
            "how": identity and identity[1], "missing": []}


# ---------------------------------------------------------------------------
# Your own data: folder:PATH and csv:TRAIN.csv[,TEST.csv] (read by own.py)

def load_own(name: str, data_dir: str | os.PathLike | None = None, skip_bad: bool = False,
             progress: bool = False) -> Dataset:
    """Your own data named `name`, parsed once and then taken from the parsed cache while its files
    keep their content. `data_dir` stands for the data's folder when it has moved (a folder dataset's
    folder; the folder of the CSV files, under their names). `skip_bad` goes on without the files or
    rows that cannot be read. The dataset's `source` is one line: where, split how, taken how."""
    problem = names.problem(name)
    if problem:
        raise DataError(problem)
    name = names.canonical(name)
    kind, paths = names.own(name)
    if data_dir is not None:
        folder = _data_dir(data_dir)
        paths = (str(folder),) if kind == names.FOLDER else tuple(str(folder / Path(p).name) for p in paths)
    source = own.scan(kind, paths)
    key = source.key(skip_bad)
    cached = _load_own_cached(key, name)
    if cached is not None:
        return cached
    result = source.read(skip_bad, progress)
    spec = _own_spec(name, result.classes)
    _validate_arrays(spec, result.arrays, {role: f"{source.where} [{role}]" for role in ROLES})
    info = json.dumps({"classes": list(result.classes), "description": result.description}).encode()
    arrays = {**result.arrays, "own": np.frombuffer(info, dtype=np.uint8)}
    _store_cached(key, arrays)
    return _to_dataset(spec, arrays, result.description)


def _own_spec(name: str, classes: tuple[str, ...]) -> DatasetSpec:
    kind, paths = names.own(name)
    what = "a folder of images" if kind == names.FOLDER else "CSV files"
    return DatasetSpec(name=name, title=f"your own data: {what}, {len(classes)} classes", classes=classes)


def _load_own_cached(key: str, name: str) -> Dataset | None:
    """The dataset cached under `key` if the entry exists and passes validation (its classes too), else None."""
    path = parsed_cache_dir() / f"{key}.npz"
    try:
        with open_regular(path) as f, np.load(f, allow_pickle=False) as z:
            arrays = _entry(path, z)
            info = json.loads(z["own"].tobytes().decode("utf-8"))
        classes, description = info["classes"], info["description"]
        if not (isinstance(classes, list) and 2 <= len(classes) <= own.MAX_CLASSES
                and len(set(classes)) == len(classes)
                and all(isinstance(c, str) and 1 <= len(c) <= own.MAX_CLASS_NAME and c.isprintable()
                        for c in classes)
                and isinstance(description, str) and description.isprintable()):
            return None
        spec = _own_spec(name, tuple(classes))
        _validate_arrays(spec, arrays, {role: f"{path} [{role}]" for role in ROLES})
    except (OSError, ValueError, KeyError, TypeError, EOFError, zlib.error, zipfile.BadZipFile, MemoryError,
            DataError):
        return None  # unreadable or invalid: read the files again and overwrite the entry
    return _to_dataset(spec, arrays, description)


def summary(dataset: Dataset) -> dict[str, Any]:
    """A dataset at a glance: its name, title, source line, split sizes and each class's counts."""
    train = np.bincount(dataset.train.labels.numpy(), minlength=len(dataset.classes))
    test = np.bincount(dataset.test.labels.numpy(), minlength=len(dataset.classes))
    return {"name": dataset.spec.name, "title": dataset.spec.title, "source": dataset.source,
            "train": len(dataset.train), "test": len(dataset.test),
            "classes": [{"name": c, "train": int(a), "test": int(b)} for c, a, b in zip(dataset.classes, train, test)]}


def describe(data_dir: str | os.PathLike | None = None) -> list[dict]:
    """For `mnistlab datasets`: each dataset, where it was found or would be cached, where we looked.

    With `data_dir`, only that folder, as `train --data-dir` does: a dataset is found there when its
    four files are and they are not recognised as another dataset.
    """
    folder = _data_dir(data_dir) if data_dir is not None else None
    held = holds(folder) if folder is not None else None
    rows = []
    for spec in DATASETS.values():
        row = {"name": spec.name, "title": spec.title, "classes": list(spec.classes),
               "files": [fname for fname, _ in spec.files.values()], "mirrors": list(spec.mirrors)}
        if spec.name == "synthetic":
            rows.append(row | {"found": True, "location": "built in (rendered on the fly)", "searched": []})
            continue
        if folder is not None:
            found = spec.name in held["datasets"]
            problems = [] if found else [f"{folder} holds {held['recognised']} (recognised by {held['how']}), "
                                         f"not {spec.name}" if held["recognised"] else
                                         f"{folder} has no {', '.join(fname for fname, _ in spec.files.values())}"]
            rows.append(row | {"found": found, "location": str(folder), "searched": [str(folder)]}
                        | ({"problems": problems} if problems else {}))
            continue
        searched = candidate_dirs(spec)
        paths, problems = None, []
        for place in searched:
            try:
                paths = find_files(spec, place)
            except DataError as e:
                problems.append(str(e))  # a usual place that cannot be used: said, and passed over
                continue
            if paths is not None:
                break
        kept = _kept_archive(spec) if paths is None else None
        rows.append(row | {
            "found": paths is not None,
            "location": str(paths["train_images"].parent) if paths else str(download_dir(spec)),
            "searched": [str(place) for place in searched],
        } | ({"problems": problems} if problems else {}) | ({"archive": str(kept)} if kept else {}))
    return rows


def _kept_archive(spec: DatasetSpec) -> Path | None:
    """The official archive of `spec` in its download folder, checksum checked, if an earlier download
    kept it (EMNIST's splits are unpacked from it without the network); else None."""
    if spec.archive is None:
        return None
    path = download_dir(spec) / spec.archive[0]
    try:
        return path if _downloaded(path, spec.archive[1]) else None
    except DataError:
        return None


# ---------------------------------------------------------------------------
# The one place data moves to the training device.

def to_device(split: Split, device: torch.device, mean: float, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as normalised float32 (N, 1, 28, 28) and labels as int64, on `device`.

    The uint8 images travel (4x less than float), then are normalised there
    once: x = (x/255 - mean) / std, the notebook's ToTensor + Normalize.
    """
    images = split.images.to(device, non_blocking=True)
    labels = split.labels.to(device, non_blocking=True)
    return normalize(images, mean, std), labels


def normalize(pixels: torch.Tensor, mean: float, std: float, scaled: bool = False) -> torch.Tensor:
    """Images as a network takes them: float32 (N, 1, H, W), x = (x/255 - mean) / std.

    `pixels`: grey levels 0..255 of any dtype, (N, H, W) or (N, 1, H, W); or already divided by 255
    (`scaled`). Training, prediction and export all normalise here, so they round alike. The work is
    done in place on one float copy: MNIST's training images are 188 MB of float32.
    """
    x = pixels.to(torch.float32, copy=True)
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if not scaled:
        x.div_(255)
    return x.sub_(mean).div_(std)
