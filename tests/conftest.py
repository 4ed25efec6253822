"""Shared fixtures: a tiny, learnable fake dataset written as IDX files, and a run trained on it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from mnistlab.base.config import recipe
from mnistlab.base.data import write_idx

# Real MNIST (the four IDX files) for the slow tests: $MNISTLAB_TEST_DATA, else ../shared/data/mnist
# beside the checkout (where the project's machines keep it).
REAL_MNIST = Path(os.environ.get("MNISTLAB_TEST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")


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
    if not (REAL_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found at {REAL_MNIST}: set MNISTLAB_TEST_DATA to a folder holding the four "
                    "MNIST IDX files (`mnistlab datasets` shows where a downloaded copy is)")
    return REAL_MNIST
