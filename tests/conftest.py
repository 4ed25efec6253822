"""Shared fixtures: a tiny, learnable fake dataset written as IDX files, and a run trained on it."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest

from mnistlab.base.config import recipe
from mnistlab.base.data import DATASETS, locate, write_idx

# The data settings as the tests started (each test then gets its own empty cache, `isolated_cache`).
DATA_VARIABLES = ("MNISTLAB_DATA", "MNISTLAB_DATA_DIR", "MNISTLAB_TEST_DATA")
STARTED_WITH = {name: os.environ[name] for name in DATA_VARIABLES if os.environ.get(name)}
# Where the project's machines keep real MNIST: beside the checkout.
BESIDE_THE_CHECKOUT = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@functools.cache
def real_mnist_folder() -> Path:
    """Real MNIST (the four IDX files) for the slow tests: where mnistlab finds it with the data setting the
    tests started with ($MNISTLAB_DATA: a folder of the files, or a cache folder holding mnist/), else
    ../shared/data/mnist beside the checkout. $MNISTLAB_TEST_DATA, its old name here, still counts first."""
    if "MNISTLAB_TEST_DATA" in STARTED_WITH:
        return Path(STARTED_WITH["MNISTLAB_TEST_DATA"]).resolve()
    with pytest.MonkeyPatch.context() as mp:
        for name in DATA_VARIABLES:
            mp.delenv(name, raising=False)
        for name, value in STARTED_WITH.items():
            mp.setenv(name, value)
        found = locate(DATASETS["mnist"])
    return found["train_images"].parent.resolve() if found else BESIDE_THE_CHECKOUT


def pytest_report_header(config):
    lines = [f"real MNIST for the slow tests: {real_mnist_folder()}"]
    if "MNISTLAB_TEST_DATA" in STARTED_WITH:
        lines.append("note: MNISTLAB_TEST_DATA is deprecated; set MNISTLAB_DATA instead (the tests honour it too)")
    return lines


def fake_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class k is a bright 4x4 block at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = 4 + 5 * (k // 4), 4 + 6 * (k % 4)
        images[i, r:r + 4, c:c + 4] = 255
    return images, labels


def write_fake_dataset(folder: Path, n_train: int = 600, n_test: int = 200) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("t10k", n_test, 2)):
        images, labels = fake_digits(n, seed)
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels)
    return folder


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (BaseException passes every `except Exception`)."""


def kill_at(monkeypatch, folder, n):
    """Kill the process just before the n-th (0-based) replacement of a file in `folder` (each atomic write
    ends in one replacement: a kill there leaves the old file whole and the write undone)."""
    import mnistlab.base.files

    real, count = os.replace, {"n": 0}

    def replace(src, dst):
        if str(dst).startswith(str(folder)):
            if count["n"] == n:
                raise Killed(dst)
            count["n"] += 1
        return real(src, dst)

    monkeypatch.setattr(mnistlab.base.files.os, "replace", replace)


def pytest_configure(config):
    """One torch thread in the test process: the tests' networks are tiny, so a second thread only adds
    synchronisation, and on a busy machine two spinning threads per process slow everything down many
    times over. (Subprocesses started by the slow tests keep torch's default, as a user's would.)"""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own empty data cache: no test sees the user's files or another test's."""
    monkeypatch.setenv("MNISTLAB_DATA", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory) -> Path:
    return write_fake_dataset(tmp_path_factory.mktemp("tiny") / "idx")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_idx_dir) -> Path:
    """A run directory: the default recipe for 2 epochs on the tiny dataset."""
    from mnistlab.core.engine import train

    out = tmp_path_factory.mktemp("runs") / "tiny"
    with pytest.MonkeyPatch.context() as mp:  # session fixtures run outside `isolated_cache`
        mp.setenv("MNISTLAB_DATA", str(tmp_path_factory.mktemp("cache")))
        # No shifts: the tiny dataset's class *is* the position of a block.
        train(recipe("default", epochs=2, batch_size=32, device="cpu", shift=0), out=out, data_dir=tiny_idx_dir)
    return out


@pytest.fixture(scope="session")
def real_mnist() -> Path:
    folder = real_mnist_folder()
    if not any((folder / name).is_file() for name in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")):
        pytest.skip(f"real MNIST not found at {folder}: set MNISTLAB_DATA to a folder holding the four MNIST "
                    "IDX files (`mnistlab datasets` shows where a downloaded copy is)")
    return folder
