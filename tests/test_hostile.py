"""Hostile and careless input: every failure is one true line, nothing is silently wrong.

The first part reproduces each case of issue 10 and asserts the one-line error (or
the right result); the second states properties over generated input with
hypothesis: whatever the bytes, documents or tensors, the call returns a result or
raises mnistlab's own error with a message, and nothing else escapes.

Profiles: `ci` (the default) tries few examples per property; `slow` many more:
    HYPOTHESIS_PROFILE=slow python -m pytest -q tests/test_hostile.py
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import real_mnist_folder
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image, ImageDraw

import mnistlab.base.files
from mnistlab.base import data
from mnistlab.core import runs
from mnistlab.core.checkpoint import load_checkpoint
from mnistlab.core.engine import resume
from mnistlab.cli import main
from mnistlab.base.config import Config, recipe
from mnistlab.base.errors import (
    CheckpointError,
    DataError,
    MnistlabError,
    PredictionError,
    RunError,
)
from mnistlab.base.files import json_text, open_regular
from mnistlab.commands.prediction import predict_array, predict_files, predict_test_index
from mnistlab.base.prepare import load_image, prepare_image

FASHION = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("slow", max_examples=1000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


# ---------------------------------------------------------------------------
# Helpers

def one_line(err: str) -> str:
    """The stderr of a failed command: exactly one line, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@contextlib.contextmanager
def within(seconds: float):
    """Fail instead of hanging (a FIFO opened for reading waits for a writer forever)."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: something waited on a FIFO")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


fifo_needed = pytest.mark.skipif(not hasattr(os, "mkfifo") or not hasattr(signal, "setitimer"),
                                 reason="needs POSIX FIFOs and interval timers")


@contextlib.contextmanager
def unreadable(monkeypatch, folder: Path, code: int = errno.EACCES):
    """`folder` as a folder of mode 000 looks to a user who is not root: it can be looked at,
    but listing it or reaching anything inside raises `code` (the tests run as root, for whom
    chmod changes nothing, so the OS functions are patched instead)."""
    folder = str(folder)
    inside = folder.rstrip(os.sep) + os.sep

    def guard(real, listing=False):
        def patched(path, *args, **kwargs):
            name = os.fsdecode(path) if isinstance(path, (str, bytes, os.PathLike)) else ""
            if name.startswith(inside) or (listing and name.rstrip(os.sep) == folder):
                raise OSError(code, os.strerror(code), name)
            return real(path, *args, **kwargs)
        return patched

    with monkeypatch.context() as mp:
        mp.setattr(os, "stat", guard(os.stat))
        mp.setattr(os, "open", guard(os.open))
        mp.setattr(os, "scandir", guard(os.scandir, listing=True))
        mp.setattr(os, "listdir", guard(os.listdir, listing=True))
        yield


def run_copy(tiny_run: Path, tmp_path: Path, name: str = "run") -> Path:
    return Path(shutil.copytree(tiny_run, tmp_path / name))


def edit_meta(run: Path, change) -> Path:
    meta = json.loads((run / "model.json").read_text())
    new = change(meta)  # edits meta in place, or returns a whole new document
    meta = meta if new is None else new
    (run / "model.json").write_text(json.dumps(meta))
    return run


def write_balanced_dataset(folder: Path) -> Path:
    """Valid IDX files whose test split has 1,000 images of each class: KMNIST's label distribution."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    test_labels = rng.permutation(np.repeat(np.arange(10, dtype=np.uint8), 1000))
    data.write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((100, 28, 28), np.uint8))
    data.write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(100, dtype=np.uint8) % 10)
    data.write_idx(folder / "t10k-images-idx3-ubyte.gz", np.zeros((10000, 28, 28), np.uint8))
    data.write_idx(folder / "t10k-labels-idx1-ubyte.gz", test_labels)
    return folder


def digit(path: Path, ink=0, paper=255) -> Path:
    image = Image.new("L", (120, 120), paper)
    ImageDraw.Draw(image).line([(30, 20), (90, 20), (50, 100)], fill=ink, width=10)
    image.save(path)
    return path


def enospc_once(monkeypatch, after: int = 0):
    """The next atomic write after `after` more fails as on a full disk (fsync: the data did not fit)."""
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) == after + 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(mnistlab.base.files.os, "fsync", fsync)


# ---------------------------------------------------------------------------
# Damaged data

def test_an_idx_header_whose_sizes_overflow_is_refused_before_anything_is_allocated():
    header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 2**31, 2**31, 4)
    with pytest.raises(DataError, match=r"header says 2147483648x2147483648x4 = 18446744073709551616 bytes "
                                        r"of data but the file holds 0"):
        data.parse_idx(header, "evil")


def test_a_gzip_bomb_is_refused_after_the_size_its_header_declares():
    # 200 MB of zeros behind a header that declares 784,000 bytes: compressed, under 1 MB.
    packer = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    header = struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 1000, 28, 28)
    bomb = packer.compress(header) + b"".join(packer.compress(bytes(2**20)) for _ in range(200)) + packer.flush()
    with pytest.raises(DataError, match="header says 1000x28x28 = 784000 bytes of data but the file holds more"):
        data._decompress(bomb, Path("bomb.gz"))
    huge = gzip.compress(struct.pack(">HBB", 0, 0x08, 3) + struct.pack(">3I", 2**31, 2**31, 4))
    with pytest.raises(DataError, match="declares 18446744073709551616 bytes of data, more than the 1073741824"):
        data._decompress(huge, Path("huge.gz"))


@fifo_needed
def test_a_fifo_named_like_an_idx_file_is_refused_by_name_and_never_waited_on(tmp_path, tiny_idx_dir):
    folder = Path(shutil.copytree(tiny_idx_dir, tmp_path / "idx"))
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    os.mkfifo(folder / "t10k-labels-idx1-ubyte.gz")
    with within(10), pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: is a FIFO \(named pipe\), "
                                                    "not a regular file"):
        data.load("mnist", folder)


def test_an_unreadable_data_folder_is_one_line_in_train_and_in_datasets(tmp_path, tiny_idx_dir, monkeypatch,
                                                                       capsys):
    folder = Path(shutil.copytree(tiny_idx_dir, tmp_path / "idx"))
    with unreadable(monkeypatch, folder):
        assert main(["train", "--data-dir", str(folder), "--out", str(tmp_path / "r"), "--no-plots"]) == 1
        assert one_line(capsys.readouterr().err) == (f"mnistlab train: error: {folder}: cannot read "
                                                     "(Permission denied)")
        assert main(["datasets", "--data-dir", str(folder)]) == 1
        assert one_line(capsys.readouterr().err) == (f"mnistlab datasets: error: {folder}: cannot read "
                                                     "(Permission denied)")
    assert not (tmp_path / "r").exists()


def test_a_usual_place_that_cannot_be_read_is_passed_over_and_said(tmp_path, tiny_idx_dir, monkeypatch, capsys):
    cache = tmp_path / "cache"
    shutil.copytree(tiny_idx_dir, cache / "mnist")
    monkeypatch.setenv("MNISTLAB_DATA", str(cache))
    with unreadable(monkeypatch, cache / "mnist"):
        assert main(["datasets"]) == 0
        out = capsys.readouterr().out
    assert f"passed over: {cache / 'mnist'}: cannot read (Permission denied)" in out


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads a folder of mode 000 all the same; the patched-OS tests above cover it")
def test_a_folder_of_mode_000_is_one_line_in_train(tmp_path, tiny_idx_dir, capsys):
    folder = Path(shutil.copytree(tiny_idx_dir, tmp_path / "idx"))
    folder.chmod(0)
    try:
        assert main(["train", "--data-dir", str(folder), "--out", str(tmp_path / "r"), "--no-plots"]) == 1
        assert "Permission denied" in one_line(capsys.readouterr().err)
    finally:
        folder.chmod(0o755)


def test_a_full_cache_costs_only_speed(tmp_path, tiny_idx_dir, monkeypatch):
    enospc_once(monkeypatch)
    assert len(data.load("mnist", tiny_idx_dir).test) == 200
    assert data.cache_usage()["files"] == 0  # nothing half-written was left in the cache


# ---------------------------------------------------------------------------
# The wrong dataset

def test_test_labels_tell_the_datasets_apart():
    assert data.identify(np.repeat(np.arange(10, dtype=np.uint8), 1000))[0] == "kmnist"  # by distribution
    assert data.identify(np.arange(200, dtype=np.uint8) % 10) is None  # the fake test data: unknown
    kmnist_md5 = data.DATASETS["kmnist"].files["test_labels"][1]
    assert data.identify(np.zeros(3, np.uint8), kmnist_md5) == ("kmnist", "the MD5 of its official test-labels file")


@pytest.mark.parametrize("folder, name", [(real_mnist_folder(), "mnist"), (FASHION, "fashion-mnist")])
def test_the_real_test_labels_are_recognised_by_their_sha256(folder, name):
    if not (folder / "t10k-labels-idx1-ubyte.gz").is_file():
        pytest.skip(f"{name} not found at {folder}")
    labels = data.read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    assert data.identify(labels) == (name, "the SHA-256 of its test labels")


def test_training_on_files_of_another_dataset_is_refused_naming_both(tmp_path):
    folder = write_balanced_dataset(tmp_path / "k")
    with pytest.raises(DataError, match=rf"^{folder} holds kmnist \(recognised by its test labels: 1000 of each "
                                        r"class, .*\), not mnist; use --dataset kmnist for these files"):
        data.load("mnist", folder)
    assert data.load("kmnist", folder).identity[0] == "kmnist"


def test_a_model_evaluated_or_shown_on_another_dataset_is_one_line_unless_any_data(tmp_path, tiny_run, capsys):
    folder = write_balanced_dataset(tmp_path / "k")
    expected = (f"{folder} holds kmnist (recognised by its test labels: 1000 of each class, as in KMNIST, and not "
                f"Fashion-MNIST's), not mnist, which the model was trained on; point --data-dir at the mnist files, "
                f"or pass --any-data to use these anyway")
    for argv in (["evaluate", str(tiny_run)], ["predict", str(tiny_run), "--test-index", "0"],
                 ["plot", str(run_copy(tiny_run, tmp_path))]):
        assert main([*argv, "--data-dir", str(folder)]) == 1
        assert one_line(capsys.readouterr().err) == f"mnistlab {argv[0]}: error: {expected}"
    assert main(["evaluate", str(tiny_run), "--data-dir", str(folder), "--any-data", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 10000
    assert predict_test_index(tiny_run, 0, folder, any_data=True)["true_label"] in [str(k) for k in range(10)]


@pytest.mark.slow
def test_a_fashion_model_on_mnist_files_and_an_mnist_model_on_fashion_files_are_refused(tmp_path, tiny_run,
                                                                                      real_mnist, capsys):
    """The issue's own cases, on the real files (slow: they parse 70,000 real images)."""
    if not FASHION.is_dir():
        pytest.skip(f"Fashion-MNIST not found at {FASHION} (apt-get install dataset-fashion-mnist)")
    fashion_model = edit_meta(run_copy(tiny_run, tmp_path), lambda m: m.update(
        dataset="fashion-mnist", classes=list(data.DATASETS["fashion-mnist"].classes)))
    for argv in (["evaluate", str(fashion_model)], ["predict", str(fashion_model), "--test-index", "0"]):
        assert main([*argv, "--data-dir", str(real_mnist)]) == 1
        assert (f"{real_mnist} holds mnist (recognised by the SHA-256 of its test labels), not fashion-mnist, which "
                "the model was trained on") in one_line(capsys.readouterr().err)
    assert main(["evaluate", str(tiny_run), "--data-dir", str(FASHION)]) == 1
    assert "holds fashion-mnist" in one_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------
# Damaged or hostile model files

@pytest.mark.parametrize("change, message", [
    (lambda m: m["architecture"].update(hidden=[-1]), "architecture.hidden must be a list of 1 to 16 integers"),
    (lambda m: m["architecture"].update(hidden=[10**12]), "architecture.hidden must be"),
    (lambda m: m["architecture"].update(hidden=[1e12]), "architecture.hidden must be"),
    (lambda m: m.__delitem__("classes"), "classes must be a list of 10 names"),
    (lambda m: m.update(classes=["0", "1", "2"]), "classes must be a list of 10 names"),
    (lambda m: m.update(classes=[f"{k}\nrm -rf" for k in range(10)]), "classes must be a list of 10 names"),
    (lambda m: m.update(normalization="x"), "normalization must be a JSON object"),
    (lambda m: m.__delitem__("normalization"), "normalization must be a JSON object"),
    (lambda m: m["normalization"].update(std=0), r"normalization.std must be a finite number > 0"),
    (lambda m: m["normalization"].update(mean=float("nan")), "normalization.mean must be a finite number"),
    (lambda m: m.__delitem__("dataset"), "dataset must be one of mnist, fashion-mnist, kmnist, qmnist, emnist-digits, "
                                         "emnist-letters, emnist-balanced, synthetic, or folder:PATH or csv:TRAIN.csv"),
    (lambda m: m["architecture"].update(model="rnn"), "architecture.model must be mlp or cnn"),
    (lambda m: m["architecture"].update(input_shape=[1, -28, 28]), r"architecture.input_shape must be \[1, 28, 28\]"),
    (lambda m: m["architecture"].update(num_classes=0), r"architecture.num_classes must be 10"),
    (lambda m: m.update(config="recipe"), "config must be a JSON object"),
    (lambda m: [], "the metadata must be a JSON object"),
])
def test_a_damaged_model_json_is_named_field_by_field(tmp_path, tiny_run, change, message):
    run = edit_meta(run_copy(tiny_run, tmp_path), change)
    (run / "state.pt").unlink()  # the model files alone, as a checkpoint outside a run holds them
    with pytest.raises(CheckpointError, match=rf"^{run / 'model.json'}: {message}") as err:
        load_checkpoint(run)
    assert "\n" not in str(err.value)


def test_in_a_run_a_model_json_of_another_commit_gives_way_to_the_commit(tmp_path, tiny_run):
    run = edit_meta(run_copy(tiny_run, tmp_path), lambda m: [])
    assert load_checkpoint(run).meta["commit"] == torch.load(run / "state.pt", weights_only=True)["commit"]


def test_hidden_sizes_the_weights_do_not_have_are_refused_without_allocating_them(tmp_path, tiny_run):
    # 16 layers of 65536: 64 billion parameters (256 GB) if anything were built from them.
    run = edit_meta(run_copy(tiny_run, tmp_path), lambda m: m["architecture"].update(hidden=[65536] * 16))
    with pytest.raises(CheckpointError, match=r"the weights do not fit the network described in model.json "
                                              r"\(missing 11.bias, 11.weight, 13.bias, 13.weight"):
        load_checkpoint(run)


def test_weights_of_the_wrong_shape_or_type_or_with_nan_are_refused(tmp_path, tiny_run):
    from safetensors.torch import load_file, save_file

    run = run_copy(tiny_run, tmp_path)
    good = load_file(str(run / "model.safetensors"))
    for change, message in ((lambda w: w.update({"1.weight": w["1.weight"][:64]}), r"1.weight is F32 \[64, 784\], "
                             r"but the network described in model.json needs F32 \[128, 784\]"),
                            (lambda w: w.update({"1.bias": w["1.bias"].double()}), "1.bias is F64"),
                            (lambda w: w.pop("5.bias"), r"missing 5.bias"),
                            (lambda w: w["3.weight"].__setitem__((0, 0), float("nan")), "3.weight holds NaN")):
        weights = {k: v.clone() for k, v in good.items()}
        change(weights)
        save_file(weights, str(run / "model.safetensors"))
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(run)


def test_std_0_never_reaches_a_probability_and_json_output_is_always_valid(tmp_path, tiny_run, capsys):
    run = edit_meta(run_copy(tiny_run, tmp_path), lambda m: m["normalization"].update(std=0))
    image = digit(tmp_path / "d.png")
    assert main(["predict", str(run), str(image), "--json"]) == 1
    assert "normalization.std must be a finite number > 0" in one_line(capsys.readouterr().err)
    assert json_text({"p": [float("nan"), float("inf"), 0.5]}, indent=None) == '{"p": [null, null, 0.5]}'


def test_probabilities_that_overflow_are_an_error_for_that_image(tiny_run):
    ckpt = load_checkpoint(tiny_run)
    with torch.no_grad():
        for p in ckpt.model.parameters():
            p.fill_(3e38)  # finite, but the first layer's sums overflow
    with pytest.raises(PredictionError, match="overflow"):
        predict_array(ckpt, np.full((28, 28), 255, np.uint8))


@fifo_needed
def test_model_files_that_are_not_regular_files_are_refused_by_name(tmp_path, tiny_run):
    run = run_copy(tiny_run, tmp_path)
    (run / "state.pt").unlink()  # the model files alone (in a run, the commit is read instead)
    (run / "model.json").unlink()
    os.mkfifo(run / "model.json")
    with within(10), pytest.raises(CheckpointError, match=r"model.json: is a FIFO \(named pipe\), not a regular "
                                                          "file; not a checkpoint"):
        load_checkpoint(run)


def test_model_json_nested_too_deeply_or_not_json_is_one_line(tmp_path, tiny_run):
    run = run_copy(tiny_run, tmp_path)
    (run / "state.pt").unlink()  # the model files alone (in a run, the commit is read instead)
    for text, message in (("[" * 100000 + "]" * 100000, "nested too deeply"), ("{nope", "not valid JSON"),
                          ("\xff\xfe", "not valid JSON")):
        (run / "model.json").write_bytes(text.encode("latin-1"))
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(run)


# ---------------------------------------------------------------------------
# Damaged run files

def quick(**overrides) -> Config:
    return recipe("default", **{**dict(epochs=2, batch_size=32, device="cpu", shift=0), **overrides})


def damage_state(run: Path, change) -> None:
    state = torch.load(run / "state.pt", weights_only=True)
    change(state)
    torch.save(state, run / "state.pt")


@pytest.mark.parametrize("change, message", [
    (lambda s: s["model"].update({"1.weight": torch.zeros(3, 3)}), r"1.weight is F32 \[3, 3\]"),
    (lambda s: s["model"].pop("1.weight"), "missing 1.weight"),
    (lambda s: s["model"].update({"1.weight": s["model"]["1.weight"].long()}), "1.weight is I64"),
    (lambda s: s["model"]["1.bias"].fill_(float("nan")), "the weights hold NaN"),
    (lambda s: s.pop("optimizer"), "the optimiser state is not a dictionary"),
    (lambda s: s["rows"][0].update(train_loss="x"), "metric row 1: train_loss is 'x'"),
    (lambda s: s["rows"][1].update(test_accuracy=7.0), "metric row 2: test_accuracy is 7.0"),
    (lambda s: s["meta"]["normalization"].update(std=-1), "normalization.std must be"),
    (lambda s: s["rng"].update(torch="seed"), "random number generators"),
    (lambda s: s.update(epoch=-1, rows=[]), "epoch is -1"),
])
def test_a_damaged_state_pt_is_one_line_when_resuming(tmp_path, tiny_run, change, message):
    run = run_copy(tiny_run, tmp_path)
    damage_state(run, change)
    with pytest.raises(RunError, match=rf"^{run / 'state.pt'}: damaged resume state \(.*{message}.*\); the run "
                                       "cannot continue from it$"):
        runs.read_state(run)


class Planted:
    """Unpickling this runs `touch PATH`: what a crafted state.pt would do if it were unpickled freely."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def test_a_crafted_state_pt_never_runs_its_code(tmp_path, tiny_run):
    run = run_copy(tiny_run, tmp_path)
    torch.save({"format": 2, "epoch": 0, "rows": [], "planted": Planted(tmp_path / "owned")}, run / "state.pt")
    with pytest.raises(RunError, match=r"state.pt: damaged resume state \(UnpicklingError\); the run cannot "
                                       "continue from it"):
        runs.read_state(run)
    assert not (tmp_path / "owned").exists()


@pytest.mark.parametrize("change, message", [
    (lambda s: s["optimizer"]["param_groups"][0].update(momentum=0.5), "optimizer momentum is 0.5, the config"),
    (lambda s: s["optimizer"]["param_groups"][0].update(lr=float("nan")), "optimizer lr is nan"),
    (lambda s: s["optimizer"]["state"][0].update(momentum_buffer=torch.zeros(2)), "optimizer momentum_buffer does "
                                                                                   "not fit"),
    (lambda s: s["schedule"].update(optimizer=5), "schedule does not have the entries"),
    (lambda s: s["rng"].update(generator=torch.zeros(3, dtype=torch.uint8)), r"rng.generator is not a "
                                                                               r"torch.uint8 tensor of shape"),
])
def test_a_state_that_does_not_fit_the_run_is_refused_before_training(tmp_path, tiny_run, tiny_idx_dir, change,
                                                                      message):
    from mnistlab.core.engine import resume

    run = run_copy(tiny_run, tmp_path)
    damage_state(run, change)
    runs.read_state(run)  # well-formed on its own ...
    with pytest.raises(RunError, match=f"the resume state does not fit the run's config \\({message}"):
        resume(run, data_dir=tiny_idx_dir)  # ... but not this run's (restored even with no epoch left)


@pytest.mark.parametrize("text, message", [("[]", "a config must be a JSON object of fields, got list"),
                                           ("{nope", "unreadable"), ('{"lr": "fast"}', "lr must be a finite number"),
                                           ('{"bogus": 1}', "unknown config keys: bogus")])
def test_a_damaged_config_json_is_one_line(tmp_path, tiny_run, text, message, capsys):
    run = run_copy(tiny_run, tmp_path)
    (run / "config.json").write_text(text)
    assert main(["train", "--resume", str(run)]) == 1
    assert message in one_line(capsys.readouterr().err)


def test_a_garbage_metrics_csv_is_one_line_and_resume_rewrites_it(tmp_path, tiny_run, capsys):
    run = run_copy(tiny_run, tmp_path)
    (run / "metrics.csv").write_bytes(b"\x00\xff garbage,\n1,2\n")
    with pytest.raises(RunError, match=rf"train --resume {run}` rewrites it"):
        runs.read_metrics(run)
    assert main(["plot", str(run)]) == 0  # readers take the rows from the commit, not from metrics.csv
    capsys.readouterr()
    resume(run)  # resuming (here: a finished run, so nothing to train) publishes the derived files again
    assert [r["epoch"] for r in runs.read_metrics(run)] == [1, 2]


# ---------------------------------------------------------------------------
# Hostile images, names and outputs of predict

@fifo_needed
def test_predict_on_a_fifo_named_x_png_is_an_error_for_that_file_and_the_batch_goes_on(tmp_path, tiny_run,
                                                                                      capsys):
    os.mkfifo(tmp_path / "x.png")
    good = digit(tmp_path / "d.png")
    with within(20):
        code = main(["predict", str(tiny_run), str(tmp_path / "x.png"), "/dev/null", str(good)])
    out, err = capsys.readouterr()
    assert code == 1
    assert err.splitlines() == [f"error: {tmp_path / 'x.png'}: is a FIFO (named pipe), not a regular file, not an image",
                                "error: /dev/null: is a character device, not a regular file, not an image"]
    assert out.startswith(f"{good}: ")


def test_an_unwritable_save_prepared_folder_is_an_error_for_that_file_only(tmp_path, tiny_run, monkeypatch):
    a, b = digit(tmp_path / "a.png"), digit(tmp_path / "b.png")
    enospc_once(monkeypatch)  # the first image's prepared copy meets a full disk; the second's fits
    first, second = predict_files(tiny_run, [a, b], save_prepared=tmp_path / "out")
    assert first == {"file": str(a), "error": f"cannot write {tmp_path / 'out' / 'a.png'} (No space left on device)"}
    assert second["prepared"] == str(tmp_path / "out" / "b.png") and "prediction" in second
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.png"]


def test_a_figure_for_a_file_name_that_is_not_utf8_does_not_stop_the_batch(tmp_path, tiny_run, capsys):
    raw = os.fsencode(tmp_path) + b"/caf\xe9.png"
    try:
        digit(Path(os.fsdecode(raw)))
    except (OSError, UnicodeError):
        pytest.skip("this file system only takes UTF-8 names")
    good = digit(tmp_path / "d.png")
    [result] = predict_files(tiny_run, [raw])  # a bytes name ...
    assert result["file"] == f"{tmp_path}/caf\\xe9.png" and "prediction" in result
    # ... and the same name from the command line (Python keeps its byte as a surrogate), in a batch
    assert main(["predict", str(tiny_run), os.fsdecode(raw), str(good), "--figure", str(tmp_path / "g.png")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{tmp_path}/caf\\xe9.png: ") and out[1] == f"  figure: {tmp_path}/g-caf\\xe9.png"
    assert out[2].startswith(f"{good}: ") and Path(out[1].split(": ")[1]).is_file()


# ---------------------------------------------------------------------------
# The disk: full, read-only, a file in the way; the previous good file survives

def test_export_to_a_full_disk_is_one_line_and_the_previous_export_survives(tmp_path, tiny_run, monkeypatch,
                                                                           capsys):
    run = run_copy(tiny_run, tmp_path)
    assert main(["export", str(run), "--format", "torchscript"]) == 0
    before = (run / "model.pt").read_bytes()
    capsys.readouterr()
    enospc_once(monkeypatch)
    assert main(["export", str(run), "--format", "torchscript", "--force"]) == 1
    assert one_line(capsys.readouterr().err) == (f"mnistlab export: error: cannot write {run / 'model.pt'}: "
                                                 "No space left on device")
    assert (run / "model.pt").read_bytes() == before
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.slow  # draws the four figures twice: 10 to 20 s on the 2-core machine
def test_plot_to_a_full_disk_is_one_line_and_the_previous_figure_survives(tmp_path, tiny_run, tiny_idx_dir,
                                                                         monkeypatch, capsys):
    run = run_copy(tiny_run, tmp_path)
    assert main(["plot", str(run), "--data-dir", str(tiny_idx_dir)]) == 0
    before = (run / "figures" / "curves.png").read_bytes()
    capsys.readouterr()
    enospc_once(monkeypatch)
    assert main(["plot", str(run), "--data-dir", str(tiny_idx_dir)]) == 1
    assert one_line(capsys.readouterr().err) == (f"mnistlab plot: error: cannot write {run / 'figures' / 'curves.png'}"
                                                 ": No space left on device")
    assert (run / "figures" / "curves.png").read_bytes() == before


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_a_read_only_or_full_out_parent_is_one_line_before_any_data_is_loaded(tmp_path, monkeypatch, capsys, code):
    real = Path.mkdir

    def mkdir(path, *args, **kwargs):  # Path's own: Python 3.10's does not call os.mkdir through the module
        if os.fspath(path).startswith(str(tmp_path / "ro")):
            raise OSError(code, os.strerror(code), os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("the data was loaded first"))
    assert main(["train", "--out", str(tmp_path / "ro" / "r"), "--no-plots", "--device", "cpu"]) == 1
    assert one_line(capsys.readouterr().err) == (f"mnistlab train: error: cannot write {tmp_path / 'ro' / 'r'}: "
                                                 f"{os.strerror(code)}")


def test_a_read_only_run_folder_is_one_line(tmp_path, monkeypatch, capsys):
    real = os.open

    def open_(path, flags, *args, **kwargs):
        if os.fspath(path) == str(tmp_path / "r" / ".lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return real(path, flags, *args, **kwargs)

    (tmp_path / "r").mkdir()
    monkeypatch.setattr(os, "open", open_)
    assert main(["train", "--out", str(tmp_path / "r"), "--no-plots", "--device", "cpu"]) == 1
    assert one_line(capsys.readouterr().err) == (f"mnistlab train: error: cannot lock {tmp_path / 'r' / '.lock'}: "
                                                 "Read-only file system")


def test_export_out_under_a_file_is_one_line(tmp_path, tiny_run, capsys):
    (tmp_path / "file").write_text("")
    assert main(["export", str(tiny_run), "--format", "torchscript", "--out", str(tmp_path / "file" / "m.pt")]) == 1
    assert one_line(capsys.readouterr().err) == (f"mnistlab export: error: cannot write {tmp_path / 'file'}: a file of "
                                                 "that name is in the way")


def test_a_figure_path_that_is_a_folder_is_an_error_for_that_image(tmp_path, tiny_run):
    (tmp_path / "fig.png").mkdir()
    [result] = predict_files(tiny_run, [digit(tmp_path / "d.png")], figure=tmp_path / "fig.png")
    assert result == {"file": str(tmp_path / "d.png"), "error": f"cannot write {tmp_path / 'fig.png'} "
                      "(Is a directory)"}


def test_clear_cache_that_cannot_remove_a_file_is_one_line(tmp_path, tiny_idx_dir, monkeypatch, capsys):
    data.load("mnist", tiny_idx_dir)

    def unlink(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", unlink)
    assert main(["datasets", "--clear-cache"]) == 1
    assert "Permission denied); removed 0 files (0 bytes) before it" in one_line(capsys.readouterr().err)


def test_only_regular_files_are_opened():
    for path, kind in (("/dev/null", "a character device"), ("/", "a folder")):
        if os.path.exists(path):
            with pytest.raises(OSError, match=f"is {kind}, not a regular file"):
                open_regular(path)


# ---------------------------------------------------------------------------
# Properties: whatever the input, a result or mnistlab's own error with a message

def own_error_or_result(call, *args, **kwargs):
    """Call; return its result, or None if it raised MnistlabError with a one-line message.

    Which it was is recorded as a hypothesis event (--hypothesis-show-statistics shows the shares).
    """
    name = getattr(call, "__name__", "call")
    try:
        result = call(*args, **kwargs)
    except MnistlabError as e:
        message = str(e)
        assert message.strip() and "\n" not in message, repr(message)
        event(f"{name}: {type(e).__name__}")
        return None
    event(f"{name}: result")
    return result


@given(st.binary(max_size=64))
def test_any_bytes_parse_as_idx_or_are_named(raw):
    own_error_or_result(data.parse_idx, raw, "fuzz")


@st.composite
def idx_files(draw):
    """IDX bytes: a header of any magic, type and dimensions, and a body that fits it exactly,
    nearly (one byte short or over), or not at all."""
    zero = draw(st.sampled_from([0, 0, 0, 1]))
    dtype = draw(st.sampled_from([0x08, 0x08, 0x08, 0x09, 0x0D]))
    ndim = draw(st.integers(0, 4))
    stated = ndim + draw(st.sampled_from([0, 0, 0, -1, 1]))  # sizes written: as many as ndim says, or not
    dims = draw(st.lists(st.integers(0, 12) | st.integers(0, 2**32 - 1), min_size=max(stated, 0),
                         max_size=max(stated, 0)))
    fits = math.prod(dims[:ndim]) if len(dims) >= ndim else 0
    size = draw(st.sampled_from([fits, fits, max(fits - 1, 0), fits + 1]) if fits <= 3000 else st.integers(0, 3000))
    body = draw(st.binary(min_size=size, max_size=size))
    return struct.pack(">HBB", zero, dtype, ndim) + struct.pack(f">{len(dims)}I", *dims) + body, dims[:ndim], body


@given(idx_files(), st.booleans())
def test_any_idx_header_and_body_parse_or_are_named(idx, compress):
    raw, dims, body = idx
    raw = gzip.compress(raw) if compress else raw
    array = own_error_or_result(lambda: data.parse_idx(data._decompress(raw, Path("fuzz")), "fuzz"))
    if array is not None:
        assert array.dtype == np.uint8 and array.tobytes() == body and list(array.shape) == dims


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)


def all_paths(node, path=()):
    """Every place in nested dicts, lists and tuples, as a tuple of keys and indices (the root is ())."""
    if isinstance(node, dict):
        children = node.items()
    elif isinstance(node, (list, tuple)):
        children = enumerate(node)
    else:
        children = ()
    return [path, *(p for k, v in children for p in all_paths(v, (*path, k)))]


def mutations(document):
    """A strategy of `document` (a JSON value) with one place replaced by any JSON value, or removed."""
    paths = all_paths(document)

    def apply(choice):
        path, value, remove = choice
        doc = json.loads(json.dumps(document))
        if not path:
            return value
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if remove and isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
        return doc

    return st.tuples(st.sampled_from(paths), json_values, st.booleans()).map(apply)


@pytest.fixture(scope="module")
def model_folder(tiny_run, tmp_path_factory):
    return Path(shutil.copytree(tiny_run, tmp_path_factory.mktemp("fuzz") / "run"))


def good_meta(tiny_run):
    return json.loads((tiny_run / "model.json").read_text())


@given(data=st.data())
def test_any_model_json_loads_or_is_named(model_folder, tiny_run, data):
    meta = data.draw(mutations(good_meta(tiny_run)) | json_values)
    (model_folder / "model.json").write_text(json.dumps(meta))
    ckpt = own_error_or_result(load_checkpoint, model_folder)
    if ckpt is not None:  # what loads is usable: probabilities for an image
        probs = own_error_or_result(predict_array, ckpt, np.zeros((28, 28), np.uint8))
        assert probs is None or (np.isfinite(probs).all() and abs(float(probs.sum()) - 1) < 1e-4)


config_fields = {f for f in Config.__dataclass_fields__}


@given(st.dictionaries(st.sampled_from(sorted(config_fields)) | st.text(max_size=8), json_values, max_size=6)
       | json_values)
def test_any_config_document_is_a_config_or_is_named(document):
    config = own_error_or_result(Config.from_dict, document)
    if config is not None:
        assert config.validated() is config


@given(data=st.data())
def test_any_config_json_in_a_run_is_read_or_is_named(model_folder, data):
    document = data.draw(mutations(quick().to_dict()))
    (model_folder / "config.json").write_text(json.dumps(document))
    own_error_or_result(runs.read_config, model_folder)


tensors = st.builds(
    lambda shape, dtype, fill: torch.full(shape, fill).to(dtype),
    st.lists(st.integers(0, 5), max_size=3).map(tuple),
    st.sampled_from([torch.float32, torch.float64, torch.int64, torch.uint8, torch.bool, torch.float16]),
    st.floats(allow_nan=True, allow_infinity=True, width=16) | st.integers(0, 255))

state_leaves = tensors | json_values


def state_mutations(state):
    """`state` with one entry (at any depth of dicts and lists) replaced by a random tensor or JSON value."""
    paths = all_paths(state)

    def apply(choice):
        path, value = choice
        if not path:
            return value
        doc = copy_state(state)
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        if isinstance(parent, tuple):
            return doc  # tuples (AdamW's betas) are left as they are
        parent[path[-1]] = value
        return doc

    return st.tuples(st.sampled_from(paths), state_leaves).map(apply)


def copy_state(node):
    if isinstance(node, dict):
        return {k: copy_state(v) for k, v in node.items()}
    if isinstance(node, list):
        return [copy_state(v) for v in node]
    return node.clone() if isinstance(node, torch.Tensor) else node


@pytest.fixture(scope="module")
def trainee_parts(tiny_run, tiny_idx_dir):
    """What restoring needs: the run's config and splits, and a good commit to mutate."""
    from mnistlab.core.training import load_splits

    config = runs.read_config(tiny_run)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNISTLAB_DATA", str(tiny_idx_dir.parent / "fuzz-cache"))
        splits = load_splits(config, tiny_idx_dir, torch.device("cpu"))
    return config, splits, runs.read_state(tiny_run)


@given(data=st.data())
def test_any_state_pt_is_restored_or_is_named(model_folder, trainee_parts, data):
    from mnistlab.core.training import build

    config, splits, good = trainee_parts
    state = data.draw(state_mutations(good) | st.dictionaries(st.text(max_size=8), state_leaves, max_size=5))
    buf = io.BytesIO()
    torch.save(state, buf)
    (model_folder / "state.pt").write_bytes(buf.getvalue())
    loaded = own_error_or_result(runs.read_state, model_folder)
    if loaded is not None:
        own_error_or_result(build(config, splits, torch.device("cpu")).restore, loaded)


@given(st.binary(max_size=2000))
def test_any_bytes_as_an_image_prepare_or_are_named(raw):
    image = own_error_or_result(load_image, io.BytesIO(raw), "fuzz.png")
    if image is not None:
        own_error_or_result(prepare_image, image)


def drawing(width: int, height: int, seed: int, content: str) -> Image.Image:
    """A grey picture: noise, one flat level, or a dark stroke on light paper (a drawn digit)."""
    rng = np.random.default_rng(seed)
    if content == "noise":
        return Image.fromarray(rng.integers(0, 256, (height, width), dtype=np.uint8))
    if content == "flat":
        return Image.new("L", (width, height), int(rng.integers(0, 256)))
    image = Image.new("L", (width, height), 255)
    points = [tuple(map(int, rng.integers(0, (width, height)))) for _ in range(3)]
    ImageDraw.Draw(image).line(points, fill=0, width=int(rng.integers(1, max(2, min(width, height) // 4))))
    return image


@given(st.sampled_from(["1", "L", "P", "RGB", "RGBA", "LA", "I", "F", "I;16", "CMYK", "YCbCr", "HSV"]),
       st.integers(1, 90), st.integers(1, 90), st.integers(0, 2**32 - 1), st.sampled_from(["noise", "flat", "stroke"]),
       st.sampled_from(["PNG", "BMP", "GIF", "TIFF", "WEBP", "JPEG", None]))
def test_any_picture_of_any_mode_size_and_format_prepares_or_is_named(mode, width, height, seed, content, fmt):
    try:
        image = drawing(width, height, seed, content).convert(mode)
    except ValueError:
        return  # Pillow has no conversion from grey to this mode
    if fmt is not None:
        buf = io.BytesIO()
        try:
            image.save(buf, format=fmt)
        except (OSError, ValueError, KeyError):
            return  # Pillow cannot write this mode in this format: nothing to read back
        image = own_error_or_result(load_image, io.BytesIO(buf.getvalue()), f"fuzz.{fmt.lower()}")
        if image is None:
            return
    prepared = own_error_or_result(prepare_image, image)
    if prepared is not None:
        assert prepared.shape == (28, 28) and prepared.dtype == np.uint8


@given(st.sampled_from(["PNG", "GIF", "JPEG", "BMP", "TIFF", "WEBP"]), st.integers(0, 2**32 - 1),
       st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8),
       st.floats(0.05, 1))
def test_a_damaged_image_file_prepares_or_is_named(fmt, seed, edits, kept):
    """A real picture file with some bytes changed and its end cut off, as a bad download leaves it."""
    buf = io.BytesIO()
    drawing(60, 80, seed, "stroke").save(buf, format=fmt)
    raw = bytearray(buf.getvalue())
    for where, value in edits:
        raw[int(where * len(raw))] = value
    image = own_error_or_result(load_image, io.BytesIO(bytes(raw[:max(1, int(kept * len(raw)))])), f"bad.{fmt}")
    if image is not None:
        own_error_or_result(prepare_image, image)


@given(hnp.arrays(st.sampled_from([np.uint8, np.int16, np.int64, np.float32, np.float64, np.bool_, np.complex64]),
                  hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=40)))
def test_any_array_prepares_or_is_named(array):
    prepared = own_error_or_result(prepare_image, array)
    if prepared is not None:
        assert prepared.shape == (28, 28) and prepared.dtype == np.uint8 and not math.isnan(float(prepared.sum()))



# ---------------------------------------------------------------------------
# Every command, hostile arguments, a real process: exit 1 or 2, one line, no traceback

@pytest.fixture
def hostile_world(tmp_path, tiny_run, tiny_idx_dir):
    """Paths that each command is pointed at: a FIFO named like an image or a data file, damaged runs,
    a folder of another dataset, a file where a folder should be."""
    world = {"fifo_png": tmp_path / "x.png", "file": tmp_path / "file", "kmnist": write_balanced_dataset(tmp_path / "k")}
    world["file"].write_text("not a folder")
    if hasattr(os, "mkfifo"):
        os.mkfifo(world["fifo_png"])
        fifo_data = Path(shutil.copytree(tiny_idx_dir, tmp_path / "idx"))
        (fifo_data / "train-images-idx3-ubyte.gz").unlink()
        os.mkfifo(fifo_data / "train-images-idx3-ubyte.gz")
        world["fifo_data"] = fifo_data
    world["std0"] = edit_meta(run_copy(tiny_run, tmp_path, "std0"), lambda m: m["normalization"].update(std=0))
    world["garbage_metrics"] = run_copy(tiny_run, tmp_path, "metrics")
    (world["garbage_metrics"] / "metrics.csv").write_bytes(b"\x00\xff,,\n")
    world["nan_state"] = run_copy(tiny_run, tmp_path, "nan")
    damage_state(world["nan_state"], lambda s: s["model"]["1.bias"].fill_(float("nan")))
    world["run"] = tiny_run
    return world


HOSTILE = {
    "train": lambda w: ["train", "--data-dir", str(w["fifo_data"]), "--out", str(w["file"].parent / "t"), "--no-plots"],
    "train-resume": lambda w: ["train", "--resume", str(w["nan_state"])],
    "train-flags": lambda w: ["train", "--std", "inf", "--hidden", "100000000"],
    "evaluate": lambda w: ["evaluate", str(w["std0"]), "--json"],
    "evaluate-data": lambda w: ["evaluate", str(w["run"]), "--data-dir", str(w["kmnist"]), "--device", "cpu"],
    "runs": lambda w: ["runs", str(w["fifo_png"])],
    "recipes": lambda w: ["recipes", "--json", "--bogus"],
    "datasets": lambda w: ["datasets", "--data-dir", str(w["file"])],
    "predict": lambda w: ["predict", str(w["run"]), str(w["fifo_png"]), "--json"],
    "predict-index": lambda w: ["predict", str(w["run"]), "--test-index", "0", "--data-dir", str(w["kmnist"])],
    "plot": lambda w: ["plot", str(w["std0"])],
    "inspect": lambda w: ["inspect", "--model", str(w["std0"])],
    "bench": lambda w: ["bench", "--data-dir", str(w["kmnist"]), "--epochs", "1", "--repeats", "1", "--device", "cpu"],
    "export": lambda w: ["export", str(w["run"]), "--format", "torchscript", "--out", str(w["file"] / "m.pt")],
}


@pytest.mark.slow
@fifo_needed
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_every_command_given_hostile_arguments_says_one_line_and_exits_1_or_2(case, hostile_world, tmp_path):
    argv = HOSTILE[case](hostile_world)
    package = str(Path(mnistlab.base.files.__file__).resolve().parents[2])  # the mnistlab under test, from any folder
    env = {**os.environ, "MNISTLAB_DATA": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(filter(None, [package, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "mnistlab", *argv], capture_output=True, text=True, timeout=300,
                          env=env, cwd=tmp_path)
    assert done.returncode in (1, 2), (done.returncode, done.stderr)
    line = one_line(done.stderr)
    assert line.startswith(("mnistlab", "error: ")), line
