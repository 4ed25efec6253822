"""Datasets: described as data, found on disk or downloaded safely, parsed once.

Each dataset is one entry of `DATASETS`: its class names, the official file
names with their published MD5 checksums, and the mirrors that serve them.
`load(name)` returns the train and test splits as uint8 tensors on the CPU;
`to_device` is the one place where data moves to the training device.

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
import torch

from .. import __version__
from .errors import DataError, WriteError
from .files import NotRegularFile, atomic_path, file_kind, open_regular, read_regular

ROLES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    classes: tuple[str, ...]
    # role -> (official file name, MD5 of the official file)
    files: dict[str, tuple[str, str]] = field(default_factory=dict)
    mirrors: tuple[str, ...] = ()
    torchvision_name: str = ""
    homepage: str = ""


_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def _files(*md5s: str) -> dict[str, tuple[str, str]]:
    return {role: (_IDX_FILES[role], md5) for role, md5 in zip(ROLES, md5s)}


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST handwritten digits",
        classes=tuple(str(d) for d in range(10)),
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
    "synthetic": DatasetSpec(
        name="synthetic",
        title="Digits rendered from matplotlib's fonts (no files, no network)",
        classes=tuple(str(d) for d in range(10)),
    ),
}

# IDX type code 0x08 = unsigned byte; the last byte of the magic is the number of dims.
IDX_UBYTE = 0x08
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

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
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
            if len(head) < 4 or head[:3] != b"\x00\x00\x08" or not 1 <= head[3] <= 3:
                return head + f.read(64)  # not an IDX header: parse_idx says so
            dims = f.read(4 * head[3])
            if len(dims) < 4 * head[3]:
                return head + dims
            declared = math.prod(struct.unpack(f">{head[3]}I", dims))
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
    """Decode IDX bytes (unsigned-byte type) into a numpy array, checking the header."""
    if len(data) < 4:
        raise DataError(f"{where}: too short to be an IDX file ({len(data)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or not 1 <= ndim <= 3:
        raise DataError(f"{where}: not an IDX file (magic number 0x{data[:4].hex()}, "
                        "expected 0x00000801 for labels or 0x00000803 for images)")
    if dtype != IDX_UBYTE:
        raise DataError(f"{where}: IDX type code 0x{dtype:02x} is not supported "
                        f"(expected 0x{IDX_UBYTE:02x}, unsigned bytes)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    # In Python integers: sizes up to (2^32-1)^3 cannot wrap around (numpy's int64 product of
    # 2^31 x 2^31 x 4 is 0), so a hostile header is refused before anything is allocated.
    expected = math.prod(shape)
    if len(data) - header != expected:
        raise DataError(f"{where}: header says {'x'.join(map(str, shape))} = {expected} "
                        f"bytes of data but the file holds {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    return parse_idx(_open_bytes(path), str(path))


def encode_idx(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, IDX_UBYTE, array.ndim)
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
    import platformdirs

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
    return cache_root() / spec.name


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
    dirs.append(Path("/usr/share/datasets") / spec.name)
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


def _fetch(url: str, dest: Path, md5: str, timeout: float, progress: bool) -> None:
    """Download `url` to `dest` through a temporary file; raise with a short reason."""
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
                if first and not chunk.startswith(b"\x1f\x8b"):
                    if chunk.lstrip()[:1] == b"<":
                        raise ValueError("served an HTML page instead of the file")
                    raise ValueError("the response is not a gzip file")
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
    """Fetch every missing official file into `dest_dir`, trying each mirror in turn.

    `timeout` (seconds) bounds each connection attempt and each read, not a whole file.
    """
    dest_dir = Path(dest_dir) if dest_dir is not None else download_dir(spec)
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the download folder {dest_dir} ({e.strerror or e}); "
                        "set MNISTLAB_DATA to a writable folder or pass --data-dir DIR") from None
    mirrors = list(spec.mirrors if mirrors is None else mirrors)
    paths: dict[str, Path] = {}
    for role, (fname, md5) in spec.files.items():
        dest = dest_dir / fname
        if _downloaded(dest, md5):
            paths[role] = dest
            continue
        attempts = []
        for mirror in mirrors:
            url = mirror + fname
            try:
                _fetch(url, dest, md5, timeout, progress)
                # Ask the mirror that worked first for the next files: a dead one costs a timeout each.
                mirrors.remove(mirror)
                mirrors.insert(0, mirror)
                break
            except Exception as e:  # noqa: BLE001 - every failure means: next mirror
                attempts.append(f"  {url}: {_reason(e)}")
        else:
            raise DataError(
                f"could not download {spec.name} file {fname}; every mirror failed:\n"
                + "\n".join(attempts)
                + f"\nTo continue offline, put the files {', '.join(f for f, _ in spec.files.values())}"
                + f"\n(.gz or uncompressed) in {dest_dir}, or pass --data-dir DIR pointing at them,"
                + "\nor try everything without data: --dataset synthetic")
        paths[role] = dest
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
    digest = hashlib.md5()
    with open_regular(path) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# Parsed cache: the decoded uint8 arrays, keyed by the content of the source files.
#
# The key is a SHA-256 of the four files' bytes as stored (about 11 MB of gzip for
# MNIST), so a dataset read from two folders is cached once, and a changed file
# gets a new entry. Cached arrays are validated on every load exactly like parsed
# files: an entry that fails is ignored and rewritten, never trusted.

CACHE_FORMAT = 1  # bump when what an entry holds changes: older entries are then never read


def parsed_cache_dir() -> Path:
    return cache_root() / "parsed"


def _read_sources(paths: dict[str, Path]) -> tuple[str, dict[str, bytes]]:
    """(content key, the files' bytes): each file is read once, for the key and, if needed, for parsing."""
    digest = hashlib.sha256(f"mnistlab-parsed-v{CACHE_FORMAT};".encode())
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


def _load_cached(key: str, spec: DatasetSpec) -> dict[str, np.ndarray] | None:
    """The cached arrays for `key` if the entry exists and passes validation, else None."""
    path = parsed_cache_dir() / f"{key}.npz"
    try:
        with open_regular(path) as f, np.load(f, allow_pickle=False) as z:
            arrays = {role: z[role] for role in ROLES}
        _validate_arrays(spec, arrays, {role: f"{path} [{role}]" for role in ROLES})
    except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile, MemoryError, DataError):
        return None  # unreadable or invalid: parse the source again and overwrite the entry
    return arrays


def _store_cached(key: str, arrays: dict[str, np.ndarray]) -> None:
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


def read_files(spec: DatasetSpec, paths: dict[str, Path], use_cache: bool = True) -> dict[str, np.ndarray]:
    """Parse and validate the four files, or take them from the parsed cache (validated the same way)."""
    key, contents = _read_sources(paths)
    arrays = _load_cached(key, spec) if use_cache else None
    if arrays is None:
        arrays = {role: parse_idx(_decompress(contents[role], paths[role]), str(paths[role])) for role in ROLES}
        _validate_arrays(spec, arrays, {role: str(paths[role]) for role in ROLES})
        if use_cache:
            _store_cached(key, arrays)
    return arrays


def _to_dataset(spec: DatasetSpec, arrays: dict[str, np.ndarray], source: str) -> Dataset:
    def split(name: str) -> Split:
        return Split(torch.from_numpy(np.array(arrays[f"{name}_images"], copy=True)),
                     torch.from_numpy(arrays[f"{name}_labels"].astype(np.int64)))

    return Dataset(spec, split("train"), split("test"), source)


def load(name: str = "mnist", data_dir: str | os.PathLike | None = None, download_missing: bool = True,
         progress: bool = True, any_data: bool = False) -> Dataset:
    """The dataset `name` as uint8 tensors, from disk, the cache, or a download.

    Files recognised as another dataset (`identify`) are a DataError, unless `any_data`.
    """
    spec = get_spec(name)
    if name == "synthetic":
        if data_dir is not None:
            raise DataError("--data-dir does not apply to --dataset synthetic (it needs no files)")
        # Rendering takes seconds; the result only depends on the generator's version.
        import matplotlib

        from .synthetic import VERSION, generate

        key = f"synthetic-v{VERSION}-matplotlib{matplotlib.__version__}"  # the fonts come from matplotlib
        arrays = _load_cached(key, spec)
        if arrays is None:
            arrays = generate()
            _store_cached(key, arrays)
        return _to_dataset(spec, arrays, "rendered from matplotlib fonts")
    paths = locate(spec, data_dir)
    if paths is None:
        if not download_missing:
            raise DataError(f"{name} not found in {', '.join(map(str, candidate_dirs(spec)))}")
        paths = download(spec, progress=progress)
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
        rows.append(row | {
            "found": paths is not None,
            "location": str(paths["train_images"].parent) if paths else str(download_dir(spec)),
            "searched": [str(place) for place in searched],
        } | ({"problems": problems} if problems else {}))
    return rows


# ---------------------------------------------------------------------------
# The one place data moves to the training device.

def to_device(split: Split, device: torch.device, mean: float, std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as normalised float32 (N, 1, 28, 28) and labels as int64, on `device`.

    The uint8 images travel (4x less than float), then are normalised there
    once: x = (x/255 - mean) / std, the notebook's ToTensor + Normalize.
    """
    images = split.images.to(device, non_blocking=True)
    labels = split.labels.to(device, non_blocking=True)
    x = images.unsqueeze(1).float().div_(255).sub_(mean).div_(std)
    return x, labels


def fingerprint(dataset: Dataset) -> str:
    """SHA-256 of what the dataset holds (both splits' images and labels, as bytes): the same data gives the
    same fingerprint in any folder and any compression; one changed label gives another."""
    digest = hashlib.sha256()
    for split in (dataset.train, dataset.test):
        for tensor in (split.images, split.labels):
            digest.update(tensor.contiguous().numpy().data)
    return digest.hexdigest()
