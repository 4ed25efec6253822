"""Nothing stale, nothing overwritten: every reader sees the run's last commit, a resume holds to the run's
own data, and no command destroys what it did not create.

Each fault is injected for real (a kill between two file operations of a commit, a changed label, a
deleted state.pt, an existing file) and the test asserts what the user sees and what is kept.
"""

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mnistlab.base import data
from mnistlab.base.config import recipe
from mnistlab.base.errors import RunError, UsageError
from mnistlab.cli import main
from mnistlab.commands.export import export
from mnistlab.commands.figures import plot_run
from mnistlab.commands.prediction import predict_test_index
from mnistlab.core import runs
from mnistlab.core.checkpoint import load_checkpoint
from mnistlab.core.engine import resume, train
from mnistlab.core.evaluation import evaluate

from conftest import Killed, kill_at, write_fake_dataset


def quick(**overrides):
    # No shifts: the tiny dataset's class *is* the position of a block.
    return recipe("seed", **{**dict(epochs=3, batch_size=32, device="cpu", shift=0, lr=0.05), **overrides})


def committed(run_dir):
    return torch.load(run_dir / "state.pt", weights_only=True)


# Replacements: config.json, epoch 0 (state, metrics, summary), epoch 1 (state, metrics, weights, model.json,
# summary), then epoch 2: state.pt is the 10th (n=9). A kill at n=10..13 leaves epoch 2 committed and
# some of its derived files one epoch behind.
@pytest.mark.parametrize("n", [10, *(pytest.param(n, marks=pytest.mark.slow) for n in (11, 12, 13))])
def test_after_a_kill_between_the_commit_and_its_files_every_reader_sees_the_commit(
        tmp_path, tiny_idx_dir, monkeypatch, capsys, n):
    run = tmp_path / "r"
    kill_at(monkeypatch, run, n)
    with pytest.raises(Killed):
        train(quick(), out=run, data_dir=tiny_idx_dir)
    monkeypatch.undo()
    state = committed(run)
    assert state["epoch"] == 2
    model = load_checkpoint(run)
    assert model.meta["commit"] == state["commit"] and model.meta["metrics"]["epochs"] == 2
    for name, tensor in model.model.state_dict().items():
        assert torch.equal(tensor, state["model"][name])
    assert evaluate(run, data_dir=tiny_idx_dir).accuracy == state["rows"][-1]["test_accuracy"]
    probabilities = predict_test_index(run, 0, data_dir=tiny_idx_dir)["probabilities"]
    expected = model.predict_proba(data.load("mnist", tiny_idx_dir).test.images[:1])[0].tolist()
    assert probabilities == pytest.approx(expected, abs=1e-7)
    assert export(run, "torchscript", out=tmp_path / "m.pt")["source"]["commit"] == state["commit"]
    assert plot_run(run, data_dir=tiny_idx_dir)  # its curves come from the commit's two rows
    # `runs` says what the commit says, and re-derives the files left behind (nobody holds the run).
    (listed,) = runs.list_runs(run)
    assert (listed.epochs, listed.state) == (2, "resumable")
    assert json.loads((run / "summary.json").read_text())["commit"] == state["commit"]
    assert json.loads((run / "model.json").read_text())["commit"] == state["commit"]
    assert [r["epoch"] for r in runs.read_metrics(run)] == [1, 2]
    assert torch.equal(load_file(str(run / "model.safetensors"))["1.weight"], state["model"]["1.weight"])


def test_a_reader_of_a_run_being_written_uses_the_commit_and_leaves_the_files_to_the_writer(tmp_path, tiny_idx_dir,
                                                                                          monkeypatch):
    run = tmp_path / "r"
    kill_at(monkeypatch, run, 10)
    with pytest.raises(Killed):
        train(quick(), out=run, data_dir=tiny_idx_dir)
    monkeypatch.undo()
    before = (run / "summary.json").read_bytes()
    with runs.open_run(run):  # held by a writer now
        assert runs.info(run).state == "running"
        assert load_checkpoint(run).meta["metrics"]["epochs"] == 2
        assert (run / "summary.json").read_bytes() == before


def test_a_sweep_killed_mid_commit_resumes_and_its_tables_say_what_the_runs_committed(tmp_path, tiny_idx_dir,
                                                                                   monkeypatch):
    args = ["sweep", "--recipe", "seed", "--lr", "0.03,0.05", "--epochs", "2", "--batch-size", "32", "--train-size",
            "200", "--val-size", "40", "--device", "cpu", "--data-dir", str(tiny_idx_dir), "--out",
            str(tmp_path / "s"), "--no-plots"]
    member = tmp_path / "s" / "runs" / "lr0.05"
    # member lr0.05: config, epoch 0 (3), epoch 1 (5), then epoch 2's state.pt; killed before its metrics.csv
    kill_at(monkeypatch, member, 10)
    with pytest.raises(Killed):
        main(args)
    monkeypatch.undo()
    assert committed(member)["epoch"] == 2
    assert main(["sweep", "--collect", str(tmp_path / "s"), "--no-plots"]) == 0
    rows = {r["name"]: r for r in _csv(tmp_path / "s" / "runs.csv")}
    assert rows["lr0.05"]["epochs"] == "2" and rows["lr0.05"]["state"] == "finished"
    assert float(rows["lr0.05"]["val_accuracy"]) == committed(member)["rows"][-1]["val_accuracy"]
    assert main(["sweep", "--resume", str(tmp_path / "s"), "--no-plots"]) == 0  # the data from the sweep itself
    assert {r["state"] for r in _csv(tmp_path / "s" / "runs.csv")} == {"finished"}


def _csv(path):
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------
# A run remembers its data and holds to it

@pytest.fixture
def half_run(tmp_path, tiny_idx_dir):
    train(quick(), out=tmp_path / "r", data_dir=tiny_idx_dir, stop_after=1)
    return tmp_path / "r"


def snapshot(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def test_a_resume_uses_the_folder_the_run_was_trained_from(half_run, monkeypatch, tmp_path):
    monkeypatch.setenv("MNISTLAB_DATA", str(tmp_path / "elsewhere"))  # the usual places hold nothing
    assert resume(half_run).summary["epochs"] == 3


def test_a_resume_on_other_files_with_shifted_labels_is_refused_and_changes_nothing(half_run, tiny_idx_dir,
                                                                                   tmp_path):
    other = shutil.copytree(tiny_idx_dir, tmp_path / "shifted")
    labels = data.read_idx(other / "train-labels-idx1-ubyte.gz")
    data.write_idx(other / "train-labels-idx1-ubyte.gz", (labels + 1) % 10)
    before = snapshot(half_run)
    with pytest.raises(RunError, match=rf"^{other}: these files hold other data than {half_run} was trained on "
                                       r"\(content fingerprint [0-9a-f]{12}, the run's [0-9a-f]{12}\); point "
                                       r"--data-dir at the run's data, or pass --any-data"):
        resume(half_run, data_dir=other, epochs=5)
    assert snapshot(half_run) == before  # not even config.json's epochs
    assert resume(half_run, data_dir=other, any_data=True).summary["epochs"] == 3


def test_the_same_data_in_another_folder_or_compression_is_the_same_data(half_run, tiny_idx_dir, tmp_path):
    copy = tmp_path / "raw"
    copy.mkdir()
    for path in tiny_idx_dir.iterdir():
        data.write_idx(copy / path.name.removesuffix(".gz"), data.read_idx(path))
    assert resume(half_run, data_dir=copy).summary["epochs"] == 3


def test_a_refused_resume_from_the_command_line_is_one_line(half_run, tmp_path, capsys):
    other = write_fake_dataset(tmp_path / "other", n_train=500)
    assert main(["train", "--resume", str(half_run), "--data-dir", str(other), "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--any-data" in err and "Traceback" not in err


# ---------------------------------------------------------------------------
# No command destroys what it did not create

def test_train_out_refuses_a_folder_holding_a_model_it_cannot_resume(tmp_path, tiny_idx_dir):
    train(quick(epochs=1), out=tmp_path / "r", data_dir=tiny_idx_dir)
    (tmp_path / "r" / "state.pt").unlink()
    before = snapshot(tmp_path / "r")
    with pytest.raises(RunError, match="holds a trained model but no state.pt to resume it from .the model of "
                                       "epoch 1"):
        train(quick(), out=tmp_path / "r", data_dir=tiny_idx_dir)
    assert snapshot(tmp_path / "r") == before


def test_runs_shows_a_damaged_run_with_what_is_missing_and_what_is_still_usable(tmp_path, tiny_idx_dir, capsys):
    for name in ("no-state", "no-config"):
        train(quick(epochs=1), out=tmp_path / name, data_dir=tiny_idx_dir)
    (tmp_path / "no-state" / "state.pt").unlink()
    (tmp_path / "no-config" / "config.json").unlink()
    listed = {r.name: r for r in runs.list_runs(tmp_path)}
    assert {name: r.state for name, r in listed.items()} == {"no-config": "damaged", "no-state": "damaged"}
    assert "config.json is missing" in listed["no-config"].problem
    assert "state.pt is missing, so the run cannot be resumed" in listed["no-state"].problem
    for r in listed.values():
        assert r.usable.startswith("the model of epoch 1 (model.safetensors) can still be evaluated")
    assert main(["runs", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("can still be evaluated") == 2
    assert evaluate(tmp_path / "no-state", data_dir=tiny_idx_dir).total == 200


@pytest.mark.parametrize("name", ["state.pt", "config.json", "summary.json", "events.jsonl"])
def test_export_never_writes_over_a_runs_own_files(tiny_run, tmp_path, name):
    run = shutil.copytree(tiny_run, tmp_path / "r")
    before = snapshot(run)
    with pytest.raises(UsageError, match=rf"would write over {name}, a file of the run"):
        export(run, "torchscript", out=run / name, force=True)
    assert snapshot(run) == before


def test_export_over_an_existing_file_needs_force_and_then_replaces_model_and_sidecar(tiny_run, tmp_path, capsys):
    target = tmp_path / "m.pt"
    target.write_bytes(b"someone's file")
    with pytest.raises(UsageError, match=rf"{target} exists; pass --force to replace it"):
        export(tiny_run, "torchscript", out=target)
    assert target.read_bytes() == b"someone's file"
    assert main(["export", str(tiny_run), "--format", "torchscript", "--out", str(target)]) == 2
    assert "pass --force" in capsys.readouterr().err
    info = export(tiny_run, "torchscript", out=target, force=True)
    assert json.loads((tmp_path / "m.pt.json").read_text())["sha256"] == info["sha256"]


def test_an_export_whose_sidecar_cannot_be_written_writes_nothing(tiny_run, tmp_path):
    (tmp_path / "m.pt.json").mkdir()
    with pytest.raises(UsageError, match="m.pt.json is a folder"):
        export(tiny_run, "torchscript", out=tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_a_kill_between_the_model_and_its_sidecar_never_leaves_a_pair_that_disagrees(tiny_run, tmp_path,
                                                                                     monkeypatch):
    target = tmp_path / "m.onnx"
    export(tiny_run, "onnx", out=target)  # uint8 input
    kill_at(monkeypatch, tmp_path, 1)  # after the model file, before its sidecar
    with pytest.raises(Killed):
        export(tiny_run, "onnx", out=target, input_kind="float", force=True)
    monkeypatch.undo()
    assert target.is_file() and not (tmp_path / "m.onnx.json").exists()


# ---------------------------------------------------------------------------
# What raised a traceback is one line now

@pytest.mark.parametrize("toml, message", [
    ("lr = []\n", "lr = \\[\\]: an empty list; give at least one value"),
    ("hidden = [[128, 64], 32]\n", "hidden = \\[\\[128, 64\\], 32\\]: expected a list of sizes"),
    ("seeds = true\n", "--seeds must be a number of seeds >= 1 \\(got True\\)"),
])
def test_a_bad_sweep_file_is_one_line_and_leaves_no_folder(tmp_path, tiny_idx_dir, capsys, toml, message):
    (tmp_path / "s.toml").write_text(toml)
    assert main(["sweep", str(tmp_path / "s.toml"), "--data-dir", str(tiny_idx_dir), "--out",
                 str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err) and not (tmp_path / "s").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "--lr", "1e39"], "lr must be > 0 and at most 3.4e\\+38, the largest float32 \\(got 1e\\+39\\)"),
    (["inspect", "--lr", "1e308"], "lr must be > 0 and at most 3.4e\\+38"),
    (["train", "--model", "cnn", "--hidden", "5"], "hidden sizes apply to the mlp; the cnn has its own layers"),
    (["sweep", "--shard", "1/1000000000000", "--out", "OUT", "--lr", "0.1,0.2"],
     "--shard 1/1000000000000: more shares than the sweep's 2 runs; use at most 2"),
])
def test_flags_that_raised_tracebacks_are_one_line_and_create_nothing(tmp_path, tiny_idx_dir, capsys, argv, message):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    assert main([*argv, "--data-dir", str(tiny_idx_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_predict_takes_images_written_after_its_flags(tiny_run, tmp_path, capsys):
    from PIL import Image

    Image.new("L", (28, 28), 255).save(tmp_path / "blank.png")
    image = Image.new("L", (28, 28), 255)
    image.paste(0, (10, 5, 16, 23))
    image.save(tmp_path / "one.png")
    assert main(["predict", str(tiny_run), "--top-k", "2", str(tmp_path / "one.png"), str(tmp_path / "blank.png")]) == 1
    out, err = capsys.readouterr()
    assert "one.png" in out and "blank.png: no ink found" in err


def test_shards_of_another_split_into_the_same_folder_are_refused(tmp_path, tiny_idx_dir, capsys):
    args = ["sweep", "--recipe", "seed", "--lr", "0.01,0.02,0.03", "--hidden", "16,32", "--epochs", "1",
            "--train-size", "100", "--val-size", "20", "--device", "cpu", "--data-dir", str(tiny_idx_dir), "--out",
            str(tmp_path / "s"), "--no-plots"]
    assert main([*args, "--shard", "0/2"]) == 0
    assert main([*args, "--shard", "1/3"]) == 2
    assert "is split into 2 shards, as its first shard said; use --shard I/2" in capsys.readouterr().err
    assert main([*args, "--shard", "1/2"]) == 0
    assert main(["sweep", "--collect", str(tmp_path / "s"), "--no-plots"]) == 0
    assert {r["state"] for r in _csv(tmp_path / "s" / "runs.csv")} == {"finished"}


def test_a_state_pt_that_is_a_torchscript_file_is_refused_without_a_warning(tiny_run, tmp_path, recwarn):
    run = shutil.copytree(tiny_run, tmp_path / "r")
    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    torch.jit.save(scripted, str(run / "state.pt"))
    recwarn.clear()
    with pytest.raises(RunError, match="state.pt: damaged resume state"):
        runs.read_state(run)
    assert [str(w.message) for w in recwarn] == []


def test_a_group_larger_than_the_open_files_allowed_trains_in_parts(tmp_path, tiny_idx_dir, monkeypatch, capsys):
    import mnistlab.commands.sweep as sweep

    monkeypatch.setattr(sweep, "allow_open_files", lambda wanted: sweep.FILES_BESIDE + 2 * sweep.FILES_PER_RUN)
    assert main(["sweep", "--recipe", "seed", "--lr", "0.01,0.02,0.03,0.04,0.05", "--epochs", "1", "--train-size",
                 "100", "--val-size", "20", "--device", "cpu", "--data-dir", str(tiny_idx_dir), "--out",
                 str(tmp_path / "s"), "--no-plots"]) == 0
    assert "its 5 runs train 2 at a time" in capsys.readouterr().out
    assert {r["state"] for r in _csv(tmp_path / "s" / "runs.csv")} == {"finished"}


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="a limit on open files is a POSIX thing")
def test_a_300_run_group_under_a_limit_of_256_open_files_trains(tmp_path, tiny_idx_dir):
    import resource

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    lrs = ",".join(f"{0.001 * (k + 1):g}" for k in range(300))
    done = subprocess.run([sys.executable, "-m", "mnistlab", "sweep", "--recipe", "seed", "--lr", lrs, "--epochs",
                           "1", "--train-size", "64", "--val-size", "16", "--batch-size", "64", "--device", "cpu",
                           "--data-dir", str(tiny_idx_dir), "--out", str(tmp_path / "s"), "--no-plots"],
                          preexec_fn=limit, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert len(_csv(tmp_path / "s" / "runs.csv")) == 300
    assert {r["state"] for r in _csv(tmp_path / "s" / "runs.csv")} == {"finished"}
