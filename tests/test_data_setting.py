"""One data setting: $MNISTLAB_DATA, honoured by the CLI and the Python API alike, whether it names a folder
holding a dataset's four IDX files itself or a cache folder of `<dataset>/` folders; `datasets` says what a
folder holds exactly as `train` takes it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_fake_dataset

import mnistlab
from mnistlab.base import data
from mnistlab.base.data import DATASETS, DataError, read_idx
from mnistlab.cli import main


@pytest.fixture
def machine(tmp_path, monkeypatch) -> Path:
    """An empty home (so the platform cache is under it), a working directory, no data setting."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("MNISTLAB_DATA", raising=False)
    monkeypatch.delenv("MNISTLAB_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data, "_noted", set())  # the deprecation note is said once per process
    return tmp_path


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def recognised_as(monkeypatch, folder: Path, name: str) -> None:
    """Make `folder`'s test labels the ones `identify` knows as `name` (real files are recognised the same way)."""
    labels = read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    digest = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.uint8).tobytes()).hexdigest()
    monkeypatch.setitem(data.TEST_LABELS_SHA256, name, digest)


def test_a_folder_of_idx_files_is_read_and_nothing_is_written_into_it(machine, monkeypatch):
    folder = write_fake_dataset(machine / "my-mnist", n_train=8, n_test=4)
    before = files_in(folder)
    monkeypatch.setenv("MNISTLAB_DATA", str(folder))
    loaded = data.load("mnist")
    assert loaded.source == str(folder) and len(loaded.train) == 8
    assert files_in(folder) == before
    # The cache folder is then the platform's: the parsed arrays go there, not beside the user's files.
    assert data.cache_root() == machine / "home" / ".cache" / "mnistlab"
    assert len(list((data.cache_root() / "parsed").iterdir())) == 1


def test_a_cache_folder_holds_dataset_folders_downloads_and_the_parsed_cache(machine, monkeypatch):
    cache = machine / "cache"
    write_fake_dataset(cache / "kmnist", n_train=8, n_test=4)
    monkeypatch.setenv("MNISTLAB_DATA", str(cache))
    assert data.setting_folder() is None and data.cache_root() == cache
    assert data.load("kmnist").source == str(cache / "kmnist")
    assert data.download_dir(DATASETS["mnist"]) == cache / "mnist"
    assert files_in(cache) == ["kmnist", "parsed"]


def test_a_recognised_folder_serves_its_own_dataset_only(machine, monkeypatch):
    folder = write_fake_dataset(machine / "fashion", n_train=8, n_test=4)
    recognised_as(monkeypatch, folder, "fashion-mnist")
    monkeypatch.setenv("MNISTLAB_DATA", str(folder))
    assert data.load("fashion-mnist").source == str(folder)
    assert folder not in data.candidate_dirs(DATASETS["kmnist"])
    with pytest.raises(DataError, match="kmnist not found in"):
        data.load("kmnist", download_missing=False)


def test_the_deprecated_variable_still_works_with_a_one_line_note(machine, monkeypatch, capsys):
    folder = write_fake_dataset(machine / "idx", n_train=8, n_test=4)
    monkeypatch.setenv("MNISTLAB_DATA_DIR", str(folder))
    assert data.load("mnist").source == str(folder)
    data.load("mnist")
    err = capsys.readouterr().err
    assert err == ("mnistlab: note: MNISTLAB_DATA_DIR is deprecated; set MNISTLAB_DATA instead "
                   "(a folder of IDX files, or a cache folder)\n")  # one line, once

    monkeypatch.setattr(data, "_noted", set())
    monkeypatch.setenv("MNISTLAB_DATA", str(machine / "cache"))
    assert data.cache_root() == machine / "cache"  # MNISTLAB_DATA wins
    assert "deprecated and ignored, since MNISTLAB_DATA is set" in capsys.readouterr().err


def test_the_python_api_and_every_command_that_reads_data_honour_the_setting(machine, monkeypatch, capsys):
    folder = write_fake_dataset(machine / "idx", n_train=64, n_test=32)
    monkeypatch.setenv("MNISTLAB_DATA", str(folder))
    run = mnistlab.train(mnistlab.recipe("seed", epochs=1, device="cpu"), out=machine / "run").run_dir
    assert mnistlab.evaluate(run).total == 32
    assert mnistlab.inspect_step("mlp", batch_size=8)["batch"]["dataset"] == "mnist"
    assert main(["inspect", "--batch-size", "8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["batch"]["shape"] == [8, 1, 28, 28]
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 32


def test_datasets_says_what_a_folder_holds_as_train_takes_it(machine, monkeypatch, capsys):
    folder = write_fake_dataset(machine / "fashion", n_train=8, n_test=4)
    recognised_as(monkeypatch, folder, "fashion-mnist")
    assert main(["datasets", "--data-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == (f"{folder} holds fashion-mnist (recognised by the SHA-256 of its test labels): "
                                   "train --data-dir takes it as --dataset fashion-mnist")
    assert "whichever dataset you name" not in out
    assert f"not found: {folder} holds fashion-mnist (recognised by the SHA-256 of its test labels), not mnist" in out
    # ... and train agrees: MNIST is refused there, Fashion-MNIST accepted.
    assert main(["train", "--dataset", "mnist", "--data-dir", str(folder), "--out", str(machine / "r"),
                 "--no-plots"]) == 1
    assert "holds fashion-mnist" in capsys.readouterr().err and not (machine / "r").exists()

    assert main(["datasets", "--json", "--data-dir", str(folder)]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["fashion-mnist"]["found"] and not rows["mnist"]["found"] and not rows["kmnist"]["found"]


def test_datasets_says_what_the_setting_is_taken_as(machine, monkeypatch, capsys):
    assert main(["datasets"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"MNISTLAB_DATA is not set: the cache folder (downloads, parsed cache) is {data.cache_root()}")
    folder = write_fake_dataset(machine / "idx", n_train=8, n_test=4)
    monkeypatch.setenv("MNISTLAB_DATA", str(folder))
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"MNISTLAB_DATA={folder}: holds IDX files not recognised")
    assert f"found in {folder}" in out
    monkeypatch.setenv("MNISTLAB_DATA", str(machine / "cache"))
    assert main(["datasets"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"MNISTLAB_DATA={machine / 'cache'}: the cache folder (downloads, parsed cache)")
