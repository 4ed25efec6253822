"""mnistlab.base.data: IDX files, validation, discovery, safe downloads, the parsed cache, normalisation."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fake_digits, write_fake_dataset

from mnistlab import cli

from mnistlab.base import data
from mnistlab.base.data import DATASETS, DataError

MNIST = DATASETS["mnist"]
FILE_NAMES = [fname for fname, _ in MNIST.files.values()]


def parsed_cache_entries() -> list[Path]:
    folder = data.cache_root() / "parsed"
    return sorted(folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------------------
# IDX round trip

@pytest.mark.parametrize("name", ["images-idx3-ubyte.gz", "images-idx3-ubyte"])
def test_idx_round_trip_gz_and_raw(tmp_path, name):
    images, _ = fake_digits(7, seed=0)
    path = tmp_path / name
    data.write_idx(path, images)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    back = data.read_idx(path)
    assert back.dtype == np.uint8 and back.shape == (7, 28, 28)
    np.testing.assert_array_equal(back, images)


def test_idx_header_layout_is_the_published_one():
    labels = np.array([3, 1, 4], dtype=np.uint8)
    # magic 0x00000801 (unsigned bytes, 1 dimension), then the count, big-endian, then the bytes.
    assert data.encode_idx(labels) == bytes.fromhex("00000801" "00000003") + bytes([3, 1, 4])
    np.testing.assert_array_equal(data.parse_idx(data.encode_idx(labels)), labels)


def test_a_gz_name_holding_raw_bytes_is_still_read(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    data.write_idx(tmp_path / "labels.gz", labels, compress=False)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "labels.gz"), labels)


# ---------------------------------------------------------------------------
# Every validation error names the file and says what is wrong

IDX_ERRORS = {
    "bad magic": (b"PK\x03\x04" + bytes(8), "not an IDX file"),
    "wrong type code": (bytes.fromhex("00000d01" "00000001") + bytes(4), "type code 0x0d"),
    "too short": (b"\x00\x00", "too short"),
    "truncated header": (bytes.fromhex("00000803" "00000001" "0000"), "truncated IDX header"),
    "data length mismatch": (bytes.fromhex("00000801" "00000005") + bytes(3), "holds 3"),
}


@pytest.mark.parametrize("case", IDX_ERRORS)
def test_malformed_idx_is_rejected_naming_the_file(tmp_path, case):
    content, expected = IDX_ERRORS[case]
    path = tmp_path / "broken-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(DataError, match=expected) as err:
        data.read_idx(path)
    assert str(path) in str(err.value)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read") as err:
        data.read_idx(tmp_path / "nope-idx1-ubyte.gz")
    assert "nope-idx1-ubyte.gz" in str(err.value)


def split_error(tmp_path, images: np.ndarray, labels: np.ndarray) -> str:
    """Write a dataset with these train arrays and return the error that loading it raises."""
    folder = write_fake_dataset(tmp_path / "idx", n_train=8, n_test=4)
    data.write_idx(folder / "train-images-idx3-ubyte.gz", images)
    data.write_idx(folder / "train-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError) as err:
        data.load("mnist", folder)
    assert parsed_cache_entries() == [], "a rejected dataset must not be cached"
    return str(err.value)


def test_images_not_28x28(tmp_path):
    message = split_error(tmp_path, np.zeros((8, 32, 32), np.uint8), np.zeros(8, np.uint8))
    assert "train-images-idx3-ubyte.gz" in message and "32x32, expected 28x28" in message


def test_images_with_wrong_number_of_dimensions(tmp_path):
    message = split_error(tmp_path, np.zeros(8, np.uint8), np.zeros(8, np.uint8))
    assert "train-images-idx3-ubyte.gz" in message and "3 dimensions" in message


def test_image_and_label_counts_disagree(tmp_path):
    message = split_error(tmp_path, np.zeros((8, 28, 28), np.uint8), np.zeros(7, np.uint8))
    assert "train-images-idx3-ubyte.gz holds 8 images" in message
    assert "train-labels-idx1-ubyte.gz holds 7 labels" in message


def test_label_out_of_range(tmp_path):
    labels = np.zeros(8, np.uint8)
    labels[3] = 10
    message = split_error(tmp_path, np.zeros((8, 28, 28), np.uint8), labels)
    assert "train-labels-idx1-ubyte.gz" in message and "label 10 out of range" in message


def test_empty_split(tmp_path):
    message = split_error(tmp_path, np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.uint8))
    assert "train-images-idx3-ubyte.gz" in message and "empty" in message


# ---------------------------------------------------------------------------
# Broken gzip files and the parsed cache

def test_corrupt_gzip_is_a_clear_error_and_not_cached(tmp_path):
    folder = write_fake_dataset(tmp_path / "idx", n_train=8, n_test=4)
    path = folder / "train-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[20:40] = bytes(20)  # zero a run of the deflate stream
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="corrupt or truncated gzip") as err:
        data.load("mnist", folder)
    assert str(path) in str(err.value)
    assert parsed_cache_entries() == []


def test_truncated_gzip_is_a_clear_error_and_not_cached(tmp_path):
    folder = write_fake_dataset(tmp_path / "idx", n_train=8, n_test=4)
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError, match="corrupt or truncated gzip") as err:
        data.load("mnist", folder)
    assert str(path) in str(err.value)
    assert parsed_cache_entries() == []


def forbid_parsing(monkeypatch) -> None:
    def no_parsing(data_bytes, where="IDX data"):
        raise AssertionError(f"{where} parsed again instead of read from the cache")

    monkeypatch.setattr(data, "parse_idx", no_parsing)


def test_second_load_comes_from_the_parsed_cache(tiny_idx_dir, monkeypatch):
    first = data.load("mnist", tiny_idx_dir)
    assert [p.suffix for p in parsed_cache_entries()] == [".npz"]
    forbid_parsing(monkeypatch)
    second = data.load("mnist", tiny_idx_dir)
    assert torch.equal(first.train.images, second.train.images)
    assert torch.equal(first.test.labels, second.test.labels)


def test_a_changed_file_is_parsed_again(tmp_path):
    folder = write_fake_dataset(tmp_path / "idx", n_train=8, n_test=4)
    data.load("mnist", folder)
    data.write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(4, 9, np.uint8))
    assert data.load("mnist", folder).test.labels.tolist() == [9, 9, 9, 9]
    assert len(parsed_cache_entries()) == 2


def test_the_same_files_in_two_folders_are_cached_once(tmp_path, monkeypatch):
    first = write_fake_dataset(tmp_path / "one", n_train=8, n_test=4)
    second = tmp_path / "elsewhere" / "two"
    second.mkdir(parents=True)
    for path in first.iterdir():
        (second / path.name).write_bytes(path.read_bytes())  # a copy: other inode, other mtime
    a = data.load("mnist", first)
    forbid_parsing(monkeypatch)
    b = data.load("mnist", second)
    assert len(parsed_cache_entries()) == 1
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)
    assert b.source == str(second)


def poison(entry: Path, **replace: np.ndarray) -> None:
    """Rewrite a cache entry with some arrays replaced, everything else in it (its fingerprint) kept."""
    with np.load(entry) as z:
        arrays = {name: z[name] for name in z.files}
    arrays.update(replace)
    with open(entry, "wb") as f:
        np.savez(f, **arrays)


POISONS = {
    "a label of 200": lambda e: poison(e, train_labels=np.full(8, 200, np.uint8)),
    "labels of -1 as int64": lambda e: poison(e, test_labels=np.full(4, -1, np.int64)),
    "images of the wrong shape": lambda e: poison(e, train_images=np.zeros((8, 32, 32), np.uint8)),
    "fewer labels than images": lambda e: poison(e, train_labels=np.zeros(3, np.uint8)),
    "float images": lambda e: poison(e, test_images=np.full((4, 28, 28), 1e9)),
    "a missing array": lambda e: np.savez(open(e, "wb"), train_images=np.zeros((8, 28, 28), np.uint8)),
    "not a zip file": lambda e: e.write_bytes(b"garbage" * 100),
    "a pickled object array": lambda e: poison(e, train_labels=np.array([object()] * 8)),
    "an empty file": lambda e: e.write_bytes(b""),
    "one flipped bit among the pixels": lambda e: flip_bit(e, e.stat().st_size // 2),
    "other labels, all in range": lambda e: poison(e, train_labels=(np.load(e)["train_labels"] + 1) % 10),
    "no fingerprint (an entry of an earlier version)": lambda e: without_fingerprint(e),
}


def without_fingerprint(entry: Path) -> None:
    with np.load(entry) as z:
        arrays = {name: z[name] for name in z.files if name != "fingerprint"}
    with open(entry, "wb") as f:
        np.savez(f, **arrays)


def flip_bit(path: Path, offset: int) -> None:
    """Damage that leaves every value valid: only the zip's CRC-32 can tell."""
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("case", POISONS)
def test_a_poisoned_cache_entry_is_ignored_and_rewritten(tmp_path, case):
    folder = write_fake_dataset(tmp_path / "idx", n_train=8, n_test=4)
    clean = data.load("mnist", folder)
    [entry] = parsed_cache_entries()
    POISONS[case](entry)
    again = data.load("mnist", folder)
    for split in ("train", "test"):
        assert torch.equal(getattr(again, split).images, getattr(clean, split).images)
        assert torch.equal(getattr(again, split).labels, getattr(clean, split).labels)
    assert [p.name for p in parsed_cache_entries()] == [entry.name]
    assert data._load_cached(entry.stem, MNIST) is not None, "the entry was rewritten with the parsed files"


def test_a_poisoned_cache_never_reaches_training(tmp_path):
    from mnistlab.base.config import recipe
    from mnistlab.core.engine import train

    folder = write_fake_dataset(tmp_path / "idx", n_train=64, n_test=16)
    data.load("mnist", folder)
    [entry] = parsed_cache_entries()
    poison(entry, train_labels=np.full(64, 200, np.uint8))
    result = train(recipe("seed", epochs=1, device="cpu"), out=tmp_path / "run", data_dir=folder)
    assert result.summary["epochs"] == 1 and 0 <= result.summary["test_accuracy"] <= 1


def test_cache_usage_and_clear_cache_leave_downloaded_files_alone(tmp_path):
    downloaded = write_fake_dataset(data.download_dir(MNIST), n_train=8, n_test=4)
    elsewhere = write_fake_dataset(tmp_path / "idx", n_train=16, n_test=4)
    data.load("mnist")
    data.load("mnist", elsewhere)
    entries = parsed_cache_entries()
    assert len(entries) == 2
    usage = data.cache_usage()
    assert usage == {"folder": str(data.parsed_cache_dir()), "files": 2,
                     "bytes": sum(p.stat().st_size for p in entries)}

    freed = data.clear_cache()
    assert freed == usage
    assert parsed_cache_entries() == [] and data.cache_usage()["bytes"] == 0
    assert sorted(p.name for p in downloaded.iterdir()) == sorted(FILE_NAMES)
    assert len(data.load("mnist").train) == 8  # parsed again from the kept files
    assert data.clear_cache()["files"] == 1


# ---------------------------------------------------------------------------
# load() and to_device()

def test_load_gives_uint8_images_and_int64_labels(tiny_idx_dir):
    ds = data.load("mnist", tiny_idx_dir)
    assert ds.train.images.shape == (600, 28, 28) and ds.train.images.dtype == torch.uint8
    assert ds.train.labels.shape == (600,) and ds.train.labels.dtype == torch.int64
    assert ds.test.images.shape == (200, 28, 28) and len(ds.test) == 200
    assert ds.classes == tuple("0123456789")
    images, labels = fake_digits(200, seed=2)  # what conftest wrote as the test split
    np.testing.assert_array_equal(ds.test.images.numpy(), images)
    np.testing.assert_array_equal(ds.test.labels.numpy(), labels)
    assert ds.source == str(tiny_idx_dir)


def test_unknown_dataset_lists_the_known_ones_and_the_syntax_of_your_own():
    with pytest.raises(DataError, match="known: mnist, fashion-mnist, kmnist, qmnist, emnist-digits, emnist-letters, "
                       "emnist-balanced, synthetic, or your own data as folder:PATH or csv:TRAIN.csv"):
        data.load("cifar")


def test_to_device_normalises_like_the_notebook(tiny_idx_dir):
    split = data.load("mnist", tiny_idx_dir).test
    x, y = data.to_device(split, torch.device("cpu"), mean=0.5, std=0.5)
    assert x.shape == (len(split), 1, 28, 28) and x.dtype == torch.float32
    expected = (split.images.double() / 255 - 0.5) / 0.5
    assert (x[:, 0].double() - expected).abs().max() < 1e-6
    assert x.min() == -1 and x.max() == 1
    assert torch.equal(y, split.labels)


# ---------------------------------------------------------------------------
# Finding local copies

def test_data_dir_with_missing_files_lists_them(tmp_path):
    folder = tmp_path / "partial"
    folder.mkdir()
    images, labels = fake_digits(4, seed=0)
    data.write_idx(folder / "train-images-idx3-ubyte.gz", images)
    with pytest.raises(DataError) as err:
        data.locate(MNIST, folder)
    message = str(err.value)
    assert "train-images" not in message
    for name in FILE_NAMES[1:]:
        assert name in message


def test_data_dir_that_does_not_exist(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        data.locate(MNIST, tmp_path / "absent")


def test_uncompressed_files_are_accepted(tmp_path):
    folder = tmp_path / "raw"
    for split, n in (("train", 8), ("t10k", 4)):
        images, labels = fake_digits(n, seed=n)
        data.write_idx(folder / f"{split}-images-idx3-ubyte", images)
        data.write_idx(folder / f"{split}-labels-idx1-ubyte", labels)
    paths = data.locate(MNIST, folder)
    assert all(p.suffix != ".gz" for p in paths.values())
    assert len(data.load("mnist", folder).train) == 8


@pytest.fixture
def empty_machine(tmp_path, monkeypatch) -> Path:
    """A home and a working directory with no datasets in them."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return home


def test_mnistlab_data_folder_is_found(empty_machine):
    assert data.locate(MNIST) is None
    write_fake_dataset(data.cache_root() / "mnist", n_train=8, n_test=4)
    assert data.locate(MNIST)["train_images"].parent == data.cache_root() / "mnist"


def test_the_notebooks_torchvision_folder_is_found(empty_machine):
    raw = empty_machine / ".pytorch" / "MNIST_data" / "MNIST" / "raw"
    write_fake_dataset(raw, n_train=8, n_test=4)
    assert data.locate(MNIST)["test_labels"] == raw / "t10k-labels-idx1-ubyte.gz"
    assert len(data.load("mnist").test) == 4


def test_other_torchvision_roots_are_found(empty_machine):
    raw = empty_machine / ".pytorch" / "F_MNIST_data" / "FashionMNIST" / "raw"
    write_fake_dataset(raw, n_train=8, n_test=4)
    assert data.locate(DATASETS["fashion-mnist"])["train_images"].parent == raw
    assert data.locate(MNIST) is None


def test_describe_reports_found_and_missing(empty_machine, tiny_idx_dir):
    write_fake_dataset(data.cache_root() / "kmnist", n_train=8, n_test=4)
    rows = {row["name"]: row for row in data.describe()}
    assert list(rows) == list(DATASETS)
    assert rows["kmnist"]["found"] and rows["kmnist"]["location"] == str(data.cache_root() / "kmnist")
    assert not rows["mnist"]["found"]
    assert rows["mnist"]["location"] == str(data.download_dir(MNIST))
    assert str(empty_machine / ".pytorch" / "MNIST_data" / "MNIST" / "raw") in rows["mnist"]["searched"]
    assert rows["mnist"]["files"] == FILE_NAMES and len(rows["mnist"]["mirrors"]) >= 2
    assert rows["synthetic"]["found"]

    with_dir = {row["name"]: row for row in data.describe(tiny_idx_dir)}
    assert with_dir["mnist"]["found"] and with_dir["mnist"]["location"] == str(tiny_idx_dir)
    # --data-dir is looked in alone, as `train --data-dir` does; files it does not recognise serve any name.
    assert with_dir["kmnist"]["searched"] == [str(tiny_idx_dir)] and with_dir["kmnist"]["found"]


def test_every_dataset_knows_its_files_checksums_and_two_mirrors():
    assert tuple(DATASETS) == data.names.KNOWN == cli.DATASET_NAMES
    for spec in DATASETS.values():
        assert len(set(spec.classes)) == len(spec.classes) >= 10
        if spec.name == "synthetic":
            continue
        assert list(spec.files) == list(data.ROLES)
        # each file's official checksum, or the checksum of the official archive that holds them
        md5s = [spec.archive[1]] if spec.archive else [md5 for _, md5 in spec.files.values()]
        assert all(len(md5) == 32 and int(md5, 16) >= 0 for md5 in md5s)
        assert len(spec.mirrors) >= 2 and all(m.endswith("/") for m in spec.mirrors)
    assert [len(DATASETS[f"emnist-{s}"].classes) for s in ("digits", "letters", "balanced")] == [10, 26, 47]


# ---------------------------------------------------------------------------
# Downloads from a local HTTP server, one broken mirror in front of a good one

class Mirrors(http.server.BaseHTTPRequestHandler):
    """Serves /<behaviour>/<file name>; `files` maps file names to their bytes."""

    files: dict[str, bytes] = {}
    kmnist: dict[str, bytes] = {}  # served under /kmnist-good/: KMNIST's file names are MNIST's
    user_agents: list[str] = []
    release = threading.Event()

    def do_GET(self):
        Mirrors.user_agents.append(self.headers.get("User-Agent", ""))
        behaviour, _, name = self.path.strip("/").partition("/")
        body = self.kmnist.get(name) if behaviour == "kmnist-good" else self.files.get(name)
        if body is None or behaviour == "missing":
            return self.send_error(404, "Not Found")
        if behaviour == "html":  # a bot wall: status 200, an HTML page
            return self.reply(b"<!DOCTYPE html><html><body>Are you a robot?</body></html>", "text/html")
        if behaviour == "html-as-binary":  # the same page, mislabelled
            return self.reply(b"\n<html><body>Access denied</body></html>", "application/octet-stream")
        if behaviour == "other-file":  # a real gzip file, not the one asked for
            return self.reply(gzip.compress(b"\x00" * 64), "application/octet-stream")
        if behaviour == "corrupt":  # the file asked for, one bit flipped on the way
            damaged = bytearray(body)
            damaged[len(damaged) // 2] ^= 0x10
            return self.reply(bytes(damaged), "application/octet-stream")
        if behaviour == "short":  # promises the whole file, sends half, hangs up
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return None
        if behaviour == "hang":
            self.release.wait(timeout=5)
            return None
        return self.reply(body, "application/octet-stream")

    def reply(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = write_fake_dataset(tmp_path_factory.mktemp("served"), n_train=20, n_test=10)
    Mirrors.files = {name: (folder / name).read_bytes() for name in FILE_NAMES}
    Mirrors.release.clear()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirrors)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    Mirrors.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def spec(server) -> data.DatasetSpec:
    """MNIST with checksums of the served fake files."""
    files = {role: (fname, hashlib.md5(Mirrors.files[fname]).hexdigest())
             for role, (fname, _) in MNIST.files.items()}
    return dataclasses.replace(MNIST, files=files, mirrors=(f"{server}/good/",))


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def fetch(spec, dest: Path, *mirrors: str) -> dict[str, Path]:
    Mirrors.user_agents.clear()
    return data.download(spec, dest, mirrors=mirrors, timeout=0.5, progress=False)


def assert_downloaded(paths: dict[str, Path], dest: Path) -> None:
    assert sorted(p.name for p in dest.iterdir()) == sorted(FILE_NAMES), "no temporary file may remain"
    for fname in FILE_NAMES:
        assert (dest / fname).read_bytes() == Mirrors.files[fname]
    assert all(agent.startswith("mnistlab/") for agent in Mirrors.user_agents)


def test_download_from_a_good_mirror(spec, server, tmp_path):
    paths = fetch(spec, tmp_path / "dl", f"{server}/good/")
    assert_downloaded(paths, tmp_path / "dl")
    assert len(Mirrors.user_agents) == 4


@pytest.mark.parametrize("broken", ["missing", "html", "html-as-binary", "other-file", "short", "hang"])
def test_a_broken_first_mirror_falls_back_to_the_next(spec, server, tmp_path, broken):
    dest = tmp_path / "dl"
    paths = fetch(spec, dest, f"{server}/{broken}/", f"{server}/good/")
    assert_downloaded(paths, dest)
    # The mirror that worked is asked first for the remaining files.
    assert len(Mirrors.user_agents) == 5


def test_a_refused_connection_falls_back(spec, server, tmp_path):
    paths = fetch(spec, tmp_path / "dl", closed_port_url(), f"{server}/good/")
    assert_downloaded(paths, tmp_path / "dl")


def test_when_every_mirror_fails_the_error_says_how_to_go_on(spec, server, tmp_path):
    dest = tmp_path / "dl"
    refused = closed_port_url()
    mirrors = [f"{server}/missing/", f"{server}/html/", f"{server}/other-file/", f"{server}/short/",
               f"{server}/hang/", refused]
    started = time.perf_counter()
    with pytest.raises(DataError) as err:
        fetch(spec, dest, *mirrors)
    assert time.perf_counter() - started < 5
    message = str(err.value)
    first = FILE_NAMES[0]
    reasons = {
        f"{server}/missing/": "HTTP 404",
        f"{server}/html/": "HTML page (text/html)",
        f"{server}/other-file/": "checksum mismatch",
        f"{server}/short/": "incomplete",
        f"{server}/hang/": "timed out",
        refused: "cannot connect",
    }
    lines = message.splitlines()
    for mirror, reason in reasons.items():
        [line] = [ln for ln in lines if f"{mirror}{first}:" in ln]
        assert reason in line, line
    for fname in FILE_NAMES:
        assert fname in message
    assert str(dest) in message
    assert "--data-dir" in message and "--dataset synthetic" in message
    assert list(dest.iterdir()) == [], "a failed download must leave nothing behind"


def test_an_existing_download_is_not_fetched_again(spec, server, tmp_path):
    dest = tmp_path / "dl"
    fetch(spec, dest, f"{server}/good/")
    fetch(spec, dest, f"{server}/missing/")  # would fail if anything were requested
    assert Mirrors.user_agents == []


def test_load_downloads_into_the_cache_once(spec, server, monkeypatch, empty_machine):
    monkeypatch.setitem(DATASETS, "mnist", spec)
    ds = data.load("mnist", progress=False)
    assert len(ds.train) == 20 and ds.source == str(data.download_dir(spec))
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(spec, mirrors=(closed_port_url(),)))
    assert len(data.load("mnist", progress=False).test) == 10  # found locally, no network needed


def offline(monkeypatch) -> None:
    """MNIST whose every mirror refuses connections, on a machine with no copy of it."""
    mirrors = (closed_port_url(), closed_port_url())
    monkeypatch.setitem(DATASETS, "mnist", dataclasses.replace(MNIST, mirrors=mirrors))


def test_load_offline_without_a_copy_explains_what_to_do(monkeypatch, empty_machine):
    offline(monkeypatch)
    with pytest.raises(DataError) as err:
        data.load("mnist", progress=False)
    message = str(err.value)
    assert message.count("cannot connect") == 2
    assert str(data.download_dir(MNIST)) in message and "--dataset synthetic" in message
    assert list(data.download_dir(MNIST).iterdir()) == []


# ---------------------------------------------------------------------------
# The command line

def test_cli_datasets(capsys, empty_machine, tiny_idx_dir):
    assert cli.main(["datasets"]) == 0
    out = capsys.readouterr().out
    for name in DATASETS:
        assert name in out
    assert f"not found; would be downloaded to {data.download_dir(MNIST)}" in out
    assert str(empty_machine / ".pytorch" / "MNIST_data" / "MNIST" / "raw") in out  # where it looked

    assert cli.main(["datasets", "--json", "--data-dir", str(tiny_idx_dir)]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["mnist"]["found"] and rows["mnist"]["location"] == str(tiny_idx_dir)


def test_cli_datasets_shows_the_parsed_cache_and_clear_cache_empties_it(capsys, tiny_idx_dir):
    assert cli.main(["datasets"]) == 0
    assert f"parsed cache     {data.parsed_cache_dir()}: 0 files, 0.0 MB\n" in capsys.readouterr().out
    data.load("mnist", tiny_idx_dir)
    size = data.cache_usage()["bytes"]
    assert cli.main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert f"{data.parsed_cache_dir()}: 1 file, {size / 1e6:.1f} MB" in out and "--clear-cache" in out

    assert cli.main(["datasets", "--clear-cache"]) == 0
    assert capsys.readouterr().out == (f"parsed cache {data.parsed_cache_dir()}: removed 1 file, freed "
                                       f"{size / 1e6:.1f} MB (downloaded IDX files are kept)\n")
    assert parsed_cache_entries() == []
    assert cli.main(["datasets", "--clear-cache", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"folder": str(data.parsed_cache_dir()), "files": 0, "bytes": 0}
    assert [p.name for p in tiny_idx_dir.iterdir()] != []


def test_cli_clear_cache_with_a_data_dir_is_a_usage_error(capsys, tiny_idx_dir):
    assert cli.main(["datasets", "--clear-cache", "--data-dir", str(tiny_idx_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "drop --data-dir" in err


def test_cli_train_with_an_empty_data_dir_is_one_clear_line(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code = cli.main(["train", "--dataset", "mnist", "--data-dir", str(empty), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("mnistlab train: error: --data-dir")
    assert "Traceback" not in err and "train-images-idx3-ubyte.gz" in err
    assert not (tmp_path / "run").exists()


def test_cli_train_offline_gives_the_download_advice_not_a_traceback(capsys, monkeypatch, empty_machine, tmp_path):
    offline(monkeypatch)
    code = cli.main(["train", "--dataset", "mnist", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("mnistlab train: error: could not download mnist")
    assert "Traceback" not in err and "--dataset synthetic" in err


# ---------------------------------------------------------------------------
# EMNIST (one official archive for every split, images stored transposed), QMNIST (labels as an
# int32 table), KMNIST: their files served by the local server, with their checksums

def idx_gz(array: np.ndarray) -> bytes:
    return gzip.compress(data.encode_idx(array), mtime=0)


def family(n_train: int, n_test: int, classes: int, first: int, seed: int) -> dict[str, np.ndarray]:
    """Upright images and labels (from `first`) of a fake dataset: random pixels, every class in each split."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % classes + first).astype(np.uint8)
    return arrays


EMNIST_SPLITS = {"digits": (10, 0), "letters": (26, 1), "balanced": (47, 0)}


@pytest.fixture(scope="module")
def family_files(server) -> dict[str, dict[str, np.ndarray]]:
    """The fake EMNIST archive, QMNIST and KMNIST files, added to what the server serves."""
    import io
    import zipfile

    upright, served = {}, {}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for split, (classes, first) in EMNIST_SPLITS.items():
            arrays = upright[f"emnist-{split}"] = family(2 * classes, classes, classes, first, seed=classes)
            spec = DATASETS[f"emnist-{split}"]
            for role, (fname, _) in spec.files.items():
                array = arrays[role].transpose(0, 2, 1) if role.endswith("images") else arrays[role]
                zf.writestr(f"gzip/{fname}", idx_gz(array))  # NIST stores each image column by column
            zf.writestr(f"gzip/emnist-{split}-mapping.txt", "0 48\n")
    served["gzip.zip"] = buffer.getvalue()
    q = upright["qmnist"] = family(30, 20, 10, 0, seed=7)
    for role, (fname, _) in DATASETS["qmnist"].files.items():
        if role.endswith("labels"):  # class, then 7 columns of NIST provenance
            table = np.stack([q[role].astype(np.int32)] + [np.full(len(q[role]), 1000 + c, np.int32) for c in range(7)], 1)
            served[fname] = idx_gz(table)
        else:
            served[fname] = idx_gz(q[role])
    k = upright["kmnist"] = family(30, 20, 10, 0, seed=8)
    kmnist_files = {fname: idx_gz(k[role]) for role, (fname, _) in DATASETS["kmnist"].files.items()}
    saved = dict(Mirrors.files)
    Mirrors.files.update(served)
    # KMNIST's file names are MNIST's: served under /kmnist-good/ (a mirror holding KMNIST)
    Mirrors.kmnist = kmnist_files
    yield upright
    Mirrors.files = saved


def served_spec(name: str, mirrors: list[str]) -> data.DatasetSpec:
    """The dataset `name` with the checksums of the fake files the server holds, and these mirrors."""
    spec = DATASETS[name]
    files = Mirrors.kmnist if name == "kmnist" else Mirrors.files
    if spec.archive:
        return dataclasses.replace(spec, archive=(spec.archive[0], hashlib.md5(files["gzip.zip"]).hexdigest()),
                                   mirrors=tuple(mirrors))
    checksums = {role: (fname, hashlib.md5(files[fname]).hexdigest()) for role, (fname, _) in spec.files.items()}
    return dataclasses.replace(spec, files=checksums, mirrors=tuple(mirrors))


def assert_upright(ds: data.Dataset, arrays: dict[str, np.ndarray], first: int = 0) -> None:
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(ds, split).images.numpy(), arrays[f"{split}_images"])
        np.testing.assert_array_equal(getattr(ds, split).labels.numpy(), arrays[f"{split}_labels"].astype(int) - first)


def test_every_emnist_split_comes_from_one_archive_downloaded_once_and_turned_upright(
        family_files, server, monkeypatch, empty_machine):
    for split in EMNIST_SPLITS:
        monkeypatch.setitem(DATASETS, f"emnist-{split}", served_spec(f"emnist-{split}", [f"{server}/good/"]))
    Mirrors.user_agents.clear()
    for split, (classes, first) in EMNIST_SPLITS.items():
        ds = data.load(f"emnist-{split}", progress=False)
        assert_upright(ds, family_files[f"emnist-{split}"], first)  # letters: labels 1-26 in the files, 0-25 here
        assert len(ds.classes) == classes and ds.source == str(data.cache_root() / "emnist")
    assert len(Mirrors.user_agents) == 1, "the archive is fetched once and kept for the other splits"
    for split in EMNIST_SPLITS:  # the files of every split removed: the kept archive still holds them
        for fname, _ in DATASETS[f"emnist-{split}"].files.values():
            (data.cache_root() / "emnist" / fname).unlink()
    rows = {row["name"]: row for row in data.describe()}
    assert rows["emnist-letters"]["archive"] == str(data.cache_root() / "emnist" / "gzip.zip")
    assert len(data.load("emnist-letters", download_missing=False).classes) == 26
    assert len(Mirrors.user_agents) == 1
    assert DATASETS["emnist-letters"].classes[0] == "a" and DATASETS["emnist-balanced"].classes[36] == "a"


def test_a_corrupted_archive_is_refused_by_its_checksum_and_the_next_mirror_serves(
        family_files, server, monkeypatch, empty_machine, tmp_path):
    spec = served_spec("emnist-digits", [f"{server}/corrupt/", f"{server}/good/"])
    paths = data.download(spec, tmp_path / "dl", timeout=0.5, progress=False)
    assert sorted(p.name for p in paths.values()) == sorted(f for f, _ in spec.files.values())
    only_corrupt = dataclasses.replace(spec, mirrors=(f"{server}/corrupt/",))
    monkeypatch.setitem(DATASETS, "emnist-digits", only_corrupt)
    with pytest.raises(DataError) as err:
        data.load("emnist-digits", progress=False)
    assert "gzip.zip: checksum mismatch" in str(err.value) and "put gzip.zip, or the files" in str(err.value)
    assert list(data.download_dir(spec).iterdir()) == [], "nothing half-downloaded is kept"


def test_qmnist_reads_the_class_column_of_its_label_table(family_files, server, monkeypatch, empty_machine):
    monkeypatch.setitem(DATASETS, "qmnist", served_spec("qmnist", [f"{server}/corrupt/", f"{server}/good/"]))
    ds = data.load("qmnist", progress=False)
    assert_upright(ds, family_files["qmnist"])
    assert sorted(p.name for p in data.download_dir(DATASETS["qmnist"]).iterdir()) == \
        sorted(f for f, _ in DATASETS["qmnist"].files.values())


def test_kmnist_downloads_with_its_checksums(family_files, server, monkeypatch, empty_machine):
    monkeypatch.setitem(DATASETS, "kmnist", served_spec("kmnist", [f"{server}/corrupt/", f"{server}/kmnist-good/"]))
    ds = data.load("kmnist", progress=False)
    assert_upright(ds, family_files["kmnist"])


def test_the_family_is_found_offline_in_torchvisions_layout(family_files, monkeypatch, empty_machine):
    for name in ("emnist-letters", "qmnist", "kmnist"):
        monkeypatch.setitem(DATASETS, name, dataclasses.replace(DATASETS[name], mirrors=(closed_port_url(),)))
    # torchvision unpacks every file in <root>/<Name>/raw (EMNIST and QMNIST uncompressed)
    raw = empty_machine / ".pytorch" / "EMNIST_data" / "EMNIST" / "raw"
    raw.mkdir(parents=True)
    with zipfile_of(Mirrors.files["gzip.zip"]) as zf:
        for fname, _ in DATASETS["emnist-letters"].files.values():
            (raw / fname.removesuffix(".gz")).write_bytes(gzip.decompress(zf.read(f"gzip/{fname}")))
    q = Path("data") / "QMNIST" / "raw"  # in the working directory: torchvision's usual root, ./data
    q.mkdir(parents=True)
    for fname, _ in DATASETS["qmnist"].files.values():
        (q / fname.removesuffix(".gz")).write_bytes(gzip.decompress(Mirrors.files[fname]))
    k = empty_machine / ".pytorch" / "MNIST_data" / "KMNIST" / "raw"
    k.mkdir(parents=True)
    for fname, body in Mirrors.kmnist.items():
        (k / fname).write_bytes(body)
    assert_upright(data.load("emnist-letters", progress=False), family_files["emnist-letters"], first=1)
    assert_upright(data.load("qmnist", progress=False), family_files["qmnist"])
    assert_upright(data.load("kmnist", progress=False), family_files["kmnist"])
    rows = {row["name"]: row for row in data.describe()}
    assert rows["emnist-letters"]["location"] == str(raw) and rows["qmnist"]["found"]


def zipfile_of(body: bytes):
    import io
    import zipfile

    return zipfile.ZipFile(io.BytesIO(body))


@pytest.mark.parametrize("damage, expected", [
    (lambda labels: labels[:, :1].copy(), "labels must be a table"),
    (lambda labels: labels + 20, r"label 2\d out of range \(the dataset has 10 classes\)"),
])
def test_a_qmnist_label_table_that_does_not_fit_is_one_line(tmp_path, damage, expected):
    spec = DATASETS["qmnist"]
    folder = tmp_path / "q"
    folder.mkdir()
    arrays = family(20, 10, 10, 0, seed=3)
    for role, (fname, _) in spec.files.items():
        array = arrays[role]
        if role.endswith("labels"):
            array = np.stack([array.astype(np.int32)] * 8, 1)
            array = damage(array) if role == "test_labels" else array
            if array.shape[1] == 1:
                array = array[:, 0]
        data.write_idx(folder / fname, array)
    with pytest.raises(DataError, match=expected):
        data.load("qmnist", folder)
