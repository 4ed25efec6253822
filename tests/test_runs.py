"""The run directory is a transaction: one writer, one commit per epoch, nothing lost at any instant.

Each fault is injected for real (a held lock, a patched writer, Ctrl-C, a diverging
loss, a full disk, a SIGKILL) and the test asserts what the user sees and what is kept.
"""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import Killed, kill_at
from safetensors.torch import load_file

import mnistlab.base.data
import mnistlab.base.errors
import mnistlab.base.files
from mnistlab.core import runs
from mnistlab.cli import main
from mnistlab.base.config import recipe
from mnistlab.base.errors import Interrupted, RunError
from mnistlab.core.runs import read_metrics
from mnistlab.core.engine import resume, train


def quick(**overrides):
    # No shifts: the tiny dataset's class *is* the position of a block.
    base = dict(epochs=3, batch_size=32, device="cpu", shift=0, val_size=100)
    return recipe(overrides.pop("recipe", "default"), **{**base, **overrides})


def weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def consistent(run_dir, epochs):
    """metrics.csv has every epoch exactly once, and summary.json and model.json agree with it."""
    rows = read_metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    meta = json.loads((run_dir / "model.json").read_text())
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    assert summary["epochs"] == epochs and summary["train_loss"] == [r["train_loss"] for r in rows]
    assert summary["test_accuracy"] == rows[-1]["test_accuracy"]
    assert meta["metrics"]["train_loss"] == summary["train_loss"]


@pytest.fixture(scope="module")
def whole(tmp_path_factory, tiny_idx_dir):
    """An uninterrupted run: what every interrupted-then-resumed run must end up equal to."""
    out = tmp_path_factory.mktemp("whole") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNISTLAB_DATA", str(tmp_path_factory.mktemp("cache")))
        train(quick(), out=out, data_dir=tiny_idx_dir)
    return out


# ---------------------------------------------------------------------------
# One writer

def test_a_second_writer_is_refused_naming_the_process_that_holds_the_run(tmp_path, tiny_idx_dir):
    with runs.create(tmp_path / "r", quick()):
        with pytest.raises(RunError, match=rf"is being written by pid {os.getpid()} on .*choose another --out"):
            train(quick(), out=tmp_path / "r", data_dir=tiny_idx_dir)
        with pytest.raises(RunError, match="is being written by"):
            resume(tmp_path / "r", data_dir=tiny_idx_dir)
    assert json.loads((tmp_path / "r" / "config.json").read_text()) == quick().to_dict()


@pytest.mark.slow
def test_two_processes_training_into_one_folder_the_second_is_refused_and_the_first_finishes(tmp_path,
                                                                                            tiny_idx_dir):
    def start(lr):
        return subprocess.Popen([sys.executable, "-m", "mnistlab", "train", "--out", str(tmp_path / "r"),
                                 "--data-dir", str(tiny_idx_dir), "--epochs", "40", "--batch-size", "32",
                                 "--no-plots", "--device", "cpu", "--lr", lr],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start("0.05")
    deadline = time.monotonic() + 120
    while not (tmp_path / "r" / "state.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    second = start("0.5")
    out2, err2 = second.communicate(timeout=120)
    out1, err1 = first.communicate(timeout=300)
    assert second.returncode == 1 and "is being written by pid" in err2 and "Traceback" not in err2
    assert first.returncode == 0, err1
    assert json.loads((tmp_path / "r" / "config.json").read_text())["lr"] == 0.05
    consistent(tmp_path / "r", 40)


# ---------------------------------------------------------------------------
# A kill at any instant of a commit loses nothing



def test_a_commit_writes_the_state_first_then_the_four_derived_files(tmp_path, tiny_idx_dir, monkeypatch):
    written = []
    real = os.replace
    monkeypatch.setattr(mnistlab.base.files.os, "replace", lambda s, d: (written.append(os.path.relpath(d, tmp_path)),
                                                                    real(s, d)))
    train(quick(epochs=1), out=tmp_path / "r", data_dir=tiny_idx_dir)
    written = [os.path.basename(w) for w in written if w.startswith("r/")]
    assert written == ["config.json", "state.pt", "metrics.csv", "summary.json",  # epoch 0: no checkpoint yet
                       "state.pt", "metrics.csv", "model.safetensors", "model.json", "summary.json"]


# Epoch 2's commit is the 10th-14th replacement: config, epoch 0 (3 files), epoch 1 (5), then epoch 2.
@pytest.mark.parametrize("n", range(9, 15))
def test_killed_between_any_two_file_operations_resume_ends_equal_to_an_uninterrupted_run(
        tmp_path, tiny_idx_dir, monkeypatch, whole, n):
    kill_at(monkeypatch, tmp_path / "r", n)
    with pytest.raises(Killed):
        train(quick(), out=tmp_path / "r", data_dir=tiny_idx_dir)
    monkeypatch.undo()
    resumed = resume(tmp_path / "r", data_dir=tiny_idx_dir)
    assert resumed.summary["train_loss"] == json.loads((whole / "summary.json").read_text())["train_loss"]
    assert same_weights(whole, tmp_path / "r")
    consistent(tmp_path / "r", 3)


@pytest.mark.slow
def test_a_real_sigkill_during_training_leaves_a_run_that_resumes_to_the_same_weights(tmp_path, tiny_idx_dir,
                                                                                       whole):
    # One thread, as the test process computes `whole` and the resume: bitwise equality holds for the same
    # thread count (the docs say so), and the epochs committed before the kill are the subprocess's.
    proc = subprocess.Popen([sys.executable, "-m", "mnistlab", "train", "--out", str(tmp_path / "r"),
                             "--data-dir", str(tiny_idx_dir), "--no-plots", "--epochs", "3", "--batch-size", "32",
                             "--device", "cpu", "--shift", "0", "--val-size", "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in proc.stdout:  # kill as soon as epoch 1 is reported: during its commit or epoch 2
        if line.startswith("epoch 1/3"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    (tmp_path / "r" / ".state.pt.x1y2.tmp").write_bytes(b"half a file")  # what a kill mid-write leaves
    assert main(["train", "--resume", str(tmp_path / "r"), "--no-plots", "--data-dir", str(tiny_idx_dir)]) == 0
    assert same_weights(whole, tmp_path / "r")
    consistent(tmp_path / "r", 3)
    assert not list((tmp_path / "r").glob(".*.tmp"))


def test_stale_temporary_files_are_removed_when_the_run_is_opened(tmp_path, tiny_idx_dir):
    train(quick(epochs=2), out=tmp_path / "r", data_dir=tiny_idx_dir, stop_after=1)
    for name in (".state.pt.abc123.tmp", ".metrics.csv.k9.tmp"):
        (tmp_path / "r" / name).write_bytes(b"left by a killed writer")
    (tmp_path / "r" / "figures").mkdir()
    (tmp_path / "r" / "figures" / ".curves.png.q.tmp").write_bytes(b"")
    resume(tmp_path / "r", data_dir=tiny_idx_dir)
    assert not list((tmp_path / "r").rglob(".*.tmp"))


def test_every_file_of_a_run_gets_the_same_permissions(tmp_path, tiny_idx_dir):
    old = os.umask(0o022)
    try:
        train(quick(epochs=1), out=tmp_path / "r", data_dir=tiny_idx_dir)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "r").iterdir() if p.name != ".lock"}
    assert set(modes.values()) == {0o644}, modes


# ---------------------------------------------------------------------------
# Stopped in the first epoch: never a dead end, and the message is true

def test_ctrl_c_in_the_first_epoch_says_nothing_was_kept_and_resume_starts_from_the_beginning(
        tmp_path, tiny_idx_dir, monkeypatch, whole):
    import mnistlab.core.engine

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mnistlab.core.engine, "train_epoch", interrupted)
    with pytest.raises(Interrupted, match="no epoch was completed, so nothing was kept; start it again with: "
                                          rf"mnistlab train --resume {tmp_path / 'r'}"):
        train(quick(), out=tmp_path / "r", data_dir=tiny_idx_dir)
    monkeypatch.undo()
    resume(tmp_path / "r", data_dir=tiny_idx_dir)
    assert same_weights(whole, tmp_path / "r")


def test_ctrl_c_later_says_which_epochs_are_kept(tmp_path, tiny_idx_dir, monkeypatch, capsys):
    import mnistlab.core.engine

    real, calls = mnistlab.core.engine.train_epoch, []

    def second_interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(mnistlab.core.engine, "train_epoch", second_interrupted)
    code = main(["train", "--out", str(tmp_path / "r"), "--data-dir", str(tiny_idx_dir), "--no-plots",
                 "--epochs", "3", "--device", "cpu"])
    assert code == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"mnistlab train: interrupted; epoch 1 is kept in {tmp_path / 'r'}; continue with: "
                   f"mnistlab train --resume {tmp_path / 'r'}")


def test_a_diverging_first_epoch_points_at_a_fresh_start_that_works(tmp_path, tiny_idx_dir):
    with pytest.raises(RunError, match=rf"Nothing was kept; start again with: mnistlab train --out {tmp_path / 'r'}"):
        train(quick(recipe="seed", lr=1e6), out=tmp_path / "r", data_dir=tiny_idx_dir)
    assert train(quick(recipe="seed"), out=tmp_path / "r", data_dir=tiny_idx_dir).summary["epochs"] == 3


def test_a_full_disk_in_the_first_epoch_is_one_line_and_the_run_continues_once_there_is_space(
        tmp_path, tiny_idx_dir, monkeypatch, whole):
    mnistlab.base.data.load("mnist", tiny_idx_dir)  # the parsed cache is written now, not during the run
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > 4:  # config and epoch 0 were written; epoch 1 meets a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(mnistlab.base.files.os, "fsync", fsync)
    with pytest.raises(RunError) as err:
        train(quick(), out=tmp_path / "r", data_dir=tiny_idx_dir)
    message = str(err.value)
    assert message.startswith(f"epoch 1 could not be saved (cannot write {tmp_path / 'r' / 'state.pt'}: "
                              "No space left on device); no epoch was completed")
    assert "\n" not in message
    monkeypatch.undo()
    resume(tmp_path / "r", data_dir=tiny_idx_dir)
    assert same_weights(whole, tmp_path / "r")


# ---------------------------------------------------------------------------
# Other people's folders, extending a run, listing runs

def test_out_into_a_folder_that_is_not_a_run_is_refused_and_nothing_in_it_changes(tmp_path, tiny_idx_dir):
    folder = tmp_path / "mine"
    (folder / "figures").mkdir(parents=True)
    for name, text in (("metrics.csv", "my numbers"), ("summary.json", "{}"), ("figures/curves.png", "x")):
        (folder / name).write_text(text)
    before = {p: (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns) for p in folder.rglob("*")}
    with pytest.raises(RunError, match="the folder is not empty and holds no run"):
        train(quick(), out=folder, data_dir=tiny_idx_dir)
    assert {p: (p.read_bytes() if p.is_file() else None, p.stat().st_mtime_ns) for p in folder.rglob("*")} == before


def test_a_run_that_fails_before_training_starts_leaves_nothing_behind(tmp_path):
    with pytest.raises(mnistlab.base.errors.DataError, match="--data-dir"):
        train(quick(), out=tmp_path / "new" / "r", data_dir=tmp_path / "no-data")
    assert not (tmp_path / "new" / "r").exists()


def test_out_that_is_a_file_is_one_line(tmp_path, tiny_idx_dir):
    (tmp_path / "f").write_text("")
    with pytest.raises(RunError, match="a file of that name is in the way"):
        train(quick(), out=tmp_path / "f", data_dir=tiny_idx_dir)


def test_extending_a_finished_constant_rate_run_equals_training_that_long_from_the_start(tmp_path, tiny_idx_dir):
    config = quick(recipe="seed", epochs=2)
    train(config, out=tmp_path / "short", data_dir=tiny_idx_dir)
    long = train(config.replace(epochs=4), out=tmp_path / "long", data_dir=tiny_idx_dir)
    extended = resume(tmp_path / "short", epochs=4, data_dir=tiny_idx_dir)
    assert extended.summary["train_loss"] == long.summary["train_loss"]
    assert same_weights(tmp_path / "short", tmp_path / "long")
    assert json.loads((tmp_path / "short" / "config.json").read_text())["epochs"] == 4
    consistent(tmp_path / "short", 4)


def test_extending_a_one_cycle_run_is_refused_with_the_reason(tmp_path, tiny_idx_dir):
    train(quick(epochs=1), out=tmp_path / "r", data_dir=tiny_idx_dir)
    with pytest.raises(RunError, match="uses the onecycle schedule, whose rate was planned for 1 epochs"):
        resume(tmp_path / "r", epochs=3)
    assert json.loads((tmp_path / "r" / "config.json").read_text())["epochs"] == 1


def test_runs_lists_finished_resumable_and_running_runs(tmp_path, tiny_idx_dir, capsys):
    train(quick(epochs=1), out=tmp_path / "done", data_dir=tiny_idx_dir)
    train(quick(epochs=3), out=tmp_path / "half", data_dir=tiny_idx_dir, stop_after=1)
    (tmp_path / "not-a-run").mkdir()
    with runs.create(tmp_path / "busy", quick()):
        listed = {r.path.name: r for r in runs.list_runs(tmp_path)}
        assert main(["runs", str(tmp_path)]) == 0
    assert {name: r.state for name, r in listed.items()} == {"busy": "running", "done": "finished",
                                                             "half": "resumable"}
    assert (listed["half"].epochs, listed["half"].total_epochs, listed["half"].recipe) == (1, 3, "default")
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "recipe", "dataset", "epochs", "test", "acc", "time", "state"]
    assert table[2].split()[:4] == ["done", "default", "mnist", "1/1"] and table[2].endswith("finished")
    assert main(["runs", str(tmp_path), "--json"]) == 0
    # Released, the busy run is one stopped before its first epoch: resumable from the start.
    assert [(r["name"], r["state"], r["epochs"]) for r in json.loads(capsys.readouterr().out)] == [
        ("busy", "resumable", 0), ("done", "finished", 1), ("half", "resumable", 1)]


def test_runs_json_is_one_document_with_the_documented_keys(tmp_path, tiny_idx_dir, capsys):
    train(quick(epochs=1), out=tmp_path / "done", data_dir=tiny_idx_dir)
    assert main(["runs", str(tmp_path), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert set(row) == {"name", "path", "state", "recipe", "dataset", "epochs", "total_epochs", "test_accuracy",
                        "train_seconds"}
    assert (row["name"], row["state"], row["epochs"]) == ("done", "finished", 1)
