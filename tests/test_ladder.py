"""`mnistlab ladder`: a fixed sequence of steps from the notebook's recipe to a track's best, each one change from
the step before, each step's seeds ordinary run directories, a table, a CSV and a figure; an interrupted ladder
continues where it stopped. The tiny ladders here train one short epoch per step on the tiny IDX files."""

from __future__ import annotations

import csv
import functools
import json
import shutil

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from mnistlab.base.config import RECIPES
from mnistlab.base.errors import Interrupted
from mnistlab.base.models import architecture, build_model, loss_function, step_flops
from mnistlab.cli import main
from mnistlab.commands import ladder
from mnistlab.core import engine, runs
from mnistlab.core.events import read

QUICK = {"epochs": 1}  # one epoch per step: every step runs, in a second or two for a whole track


def run_configs(out, rungs, seed=0):
    return [runs.read_config(out / r.run_name(seed)) for r in rungs]


# ---------------------------------------------------------------------------
# The steps

@pytest.mark.parametrize("track", list(ladder.TRACKS))
def test_every_step_changes_exactly_the_settings_it_names(track):
    rungs = ladder.plan(track, device="cpu")
    assert rungs[0].config == RECIPES["seed"].replace(device="cpu")  # the notebook's recipe, exactly
    for before, after in zip(rungs, rungs[1:]):
        assert set(after.config.differences(before.config)) == set(after.step.settings), after.step.name
        assert after.step.change and after.step.name


def test_flops_are_those_torch_counts_for_a_training_step():
    """step_flops (the linear and conv layers, forward and backward) is what torch's flop counter sees in one
    step of the notebook's MLP and of the conv net; an epoch is the sum over its batches."""
    for model, hidden in (("mlp", (128, 64)), ("cnn", (128, 64))):
        net = build_model(architecture(model, (1, 28, 28), 10, hidden))
        x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
        with FlopCounterMode(display=False) as counter:
            loss_function("logits")(net(x), y).backward()
        assert counter.get_total_flops() == step_flops(model, hidden, 32)
    config = RECIPES["seed"]
    assert ladder.flops_per_epoch(config, 60000) == 937 * step_flops("mlp", (128, 64), 64) + step_flops(
        "mlp", (128, 64), 32)
    assert ladder.flops_per_epoch(config, 60000) == 454_400 * 60000  # 27.3 GFLOP: every image once


# ---------------------------------------------------------------------------
# A tiny ladder

@pytest.fixture(scope="module")
def tiny_ladder(tmp_path_factory, tiny_idx_dir):
    """The MLP track, one seed, one epoch per step, on the tiny IDX files."""
    out = tmp_path_factory.mktemp("ladder") / "mlp"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MNISTLAB_DATA", str(tmp_path_factory.mktemp("cache")))
        result = ladder.run_ladder("mlp", seeds=1, device="cpu", data_dir=tiny_idx_dir, out=out, overrides=QUICK)
    return result


def test_a_tiny_ladder_runs_every_step_and_writes_its_table_csv_and_figure(tiny_ladder):
    out, rungs = tiny_ladder.out, ladder.plan("mlp", "cpu", QUICK)
    assert [r["name"] for r in tiny_ladder.rows] == [s.name for s in ladder.TRACKS["mlp"]]
    for row in tiny_ladder.rows:
        assert row["seeds"] == 1 and row["test_accuracy_mean"] is not None and row["train_seconds_median"] > 0
        assert row["flops_per_epoch"] == ladder.flops_per_epoch(rungs[row["step"]].config, 600)
    assert tiny_ladder.rows[0]["speedup"] == 1.0
    with open(out / "ladder.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == [r["name"] for r in tiny_ladder.rows]
    assert float(table[3]["test_accuracy_mean"]) == tiny_ladder.rows[3]["test_accuracy_mean"]
    assert "time_to_98" in table[0] and "time_to_99" not in table[0]
    assert (out / "ladder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = ladder.format_table(tiny_ladder)
    assert all(step.change in text for step in ladder.TRACKS["mlp"]) and "to 98%" in text


def test_each_steps_runs_are_ordinary_run_directories_that_differ_in_the_one_setting_named(tiny_ladder):
    out, rungs = tiny_ladder.out, ladder.plan("mlp", "cpu", QUICK)
    listed = {r.name: r for r in runs.list_runs(out)}
    assert set(listed) == {r.run_name(0) for r in rungs} and {r.state for r in listed.values()} == {"finished"}
    # and `mnistlab runs runs/` lists them among the others, by their path below it
    assert {r.name for r in runs.list_runs(out.parent)} >= {f"{out.name}/{r.run_name(0)}" for r in rungs}
    configs = run_configs(out, rungs)
    assert configs == [r.config for r in rungs]
    for rung, before, after in zip(rungs[1:], configs, configs[1:]):
        # The one override (1 epoch for all) hides the epochs step's change; every other is exactly its own.
        assert set(after.differences(before)) == set(rung.step.settings) - set(QUICK)


def test_the_time_to_98_is_the_time_at_which_target_accuracy_stops_the_same_run(tmp_path, tiny_idx_dir):
    rungs = ladder.plan("mlp", "cpu", {"epochs": 3})
    rung = rungs[-1]
    ladder.run_ladder("mlp", seeds=1, device="cpu", data_dir=tiny_idx_dir, out=tmp_path / "three",
                      overrides={"epochs": 3}, plots=False)
    rows = runs.committed_rows(tmp_path / "three" / rung.run_name(0))
    reached = [r["epoch"] for r in rows if r["test_accuracy"] >= 0.98]
    assert reached, "the tiny data's last step reaches 98%"
    assert ladder.table(tmp_path / "three", rungs, 1, (0.98,), 600)[-1]["time_to_98"] == pytest.approx(
        sum(r["seconds"] for r in rows[:reached[0]]))
    stopped = engine.train(rung.config.replace(target_accuracy=0.98), out=tmp_path / "target", data_dir=tiny_idx_dir)
    assert [r["epoch"] for r in stopped.rows] == list(range(1, reached[0] + 1))
    assert [r["test_accuracy"] for r in stopped.rows] == [r["test_accuracy"] for r in rows[:reached[0]]]
    assert stopped.summary["time_to_target"] == pytest.approx(stopped.summary["train_seconds"])
    assert read(tmp_path / "target" / "events.jsonl")[-1]["status"] == "target"


def test_an_interrupted_ladder_continues_keeping_its_finished_runs(tmp_path, tiny_idx_dir):
    out, rungs = tmp_path / "ladder", ladder.plan("mlp", "cpu", {"epochs": 2})
    epochs = []

    def interrupt_in_step_3(e):
        if e["type"] == "epoch":
            epochs.append(e["run"])
            if e["run"].endswith(rungs[3].run_name(0)):
                raise KeyboardInterrupt  # Ctrl-C just after step 3's first epoch was committed

    with pytest.raises(Interrupted) as stopped:
        ladder.run_ladder("mlp", seeds=1, device="cpu", data_dir=tiny_idx_dir, out=out, overrides={"epochs": 2},
                          on_event=interrupt_in_step_3)
    assert str(stopped.value) == (f"interrupted; 3 runs of the ladder are done and kept, of {out / rungs[3].run_name(0)}, "
                                  f"epoch 1 is kept; continue the ladder with: mnistlab ladder --track mlp --seeds 1 "
                                  f"--device cpu --out {out}")
    commits = {r.run_name(0): runs.read_state(out / r.run_name(0))["commit"] for r in rungs[:3]}
    assert runs.info(out / rungs[3].run_name(0)).state == "resumable"
    assert not (out / rungs[4].run_name(0)).exists()

    lines = []
    result = ladder.run_ladder("mlp", seeds=1, device="cpu", out=out, overrides={"epochs": 2}, log=lines.append)
    assert lines[0].endswith(f"{len(rungs) - 3} of {len(rungs)} runs to train (3 kept)")
    assert {name: runs.read_state(out / name)["commit"] for name in commits} == commits  # kept, untouched
    started = [e for e in read(out / rungs[3].run_name(0) / "events.jsonl") if e["type"] == "started"]
    assert [e["resumed"] for e in started] == [False, True] and started[1]["epoch"] == 1
    assert [r["seeds"] for r in result.rows] == [1] * len(rungs)
    # The data folder the ladder started with is the one it continues with (not given the second time).
    assert json.loads((out / "ladder.json").read_text())["data_dir"] == str(tiny_idx_dir.resolve())


def test_more_seeds_later_add_runs_to_the_same_ladder(tiny_ladder, tmp_path):
    out, rungs = tmp_path / "ladder", ladder.plan("mlp", "cpu", QUICK)
    shutil.copytree(tiny_ladder.out, out)
    before = {r.run_name(0): runs.read_state(out / r.run_name(0))["commit"] for r in rungs}
    result = ladder.run_ladder("mlp", seeds=2, device="cpu", out=out, overrides=QUICK, plots=False)
    assert {name: runs.read_state(out / name)["commit"] for name in before} == before
    assert [r["seeds"] for r in result.rows] == [2] * len(rungs)
    assert all(len(r["test_accuracies"]) == 2 for r in result.rows)


@pytest.mark.slow
def test_the_cnn_track_measures_the_time_to_99_too(tmp_path, tiny_idx_dir):
    result = ladder.run_ladder("cnn", seeds=1, device="cpu", data_dir=tiny_idx_dir, out=tmp_path / "cnn",
                               overrides={"epochs": 1, "train_size": 128})
    assert [r["name"] for r in result.rows] == [s.name for s in ladder.TRACKS["cnn"]]
    assert {"time_to_98", "time_to_99", "reached_99"} <= set(result.rows[0])
    assert result.rows[1]["flops_per_epoch"] > 50 * result.rows[0]["flops_per_epoch"]  # the conv net's cost
    assert "to 99%" in ladder.format_table(result)


def test_the_figure_of_a_ladder_without_finished_runs_says_so():
    rows = [{"step": 0, "name": "notebook", "test_accuracy_mean": None, "train_seconds_median": None}]
    fig = ladder.ladder_figure(rows, (0.98,))
    assert "no finished runs yet" in [t.get_text() for t in fig.axes[0].texts]


# ---------------------------------------------------------------------------
# The command

def exit_code(argv):
    """main()'s exit code, a flag argparse refuses (SystemExit) included."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture
def quick_command(monkeypatch):
    """`mnistlab ladder` as typed, its steps one epoch long."""
    monkeypatch.setattr(ladder, "run_ladder", functools.partial(ladder.run_ladder, overrides=QUICK))


def test_the_command_prints_the_table_and_the_files_it_wrote(quick_command, tmp_path, tiny_idx_dir, capsys):
    out = tmp_path / "l"
    assert main(["ladder", "--data-dir", str(tiny_idx_dir), "--seeds", "1", "--device", "cpu", "--out", str(out)]) == 0
    printed = capsys.readouterr().out  # each run's progress, then the table
    printed = printed[printed.index("mnistlab ladder: track mlp, 1 seed per step"):]
    assert f"wrote {out / 'ladder.csv'}" in printed and f"wrote {out / 'ladder.png'}" in printed
    assert sum(line.lstrip().startswith(tuple("012345678")) for line in printed.splitlines()) == 9
    assert main(["ladder", "--seeds", "1", "--device", "cpu", "--out", str(out), "--json"]) == 0  # all kept
    document = json.loads(capsys.readouterr().out)
    assert document["track"] == "mlp" and len(document["rows"]) == 9 and document["machine"]["torch"]


@pytest.mark.parametrize("flags, says, code", [
    (["--track", "rnn"], "argument --track: invalid choice: 'rnn'", 2),
    (["--seeds", "0"], "--seeds must be a number > 0 (got 0)", 2),
    (["--seeds", "two"], "invalid int value for --seeds: 'two'", 2),
    (["--device", "tpu"], "--device tpu: unknown device", 2),
    (["--data-dir", "{tmp}/nowhere"], "nowhere", 1),
    (["--out", "{tmp}/file"], "a file of that name is in the way; choose another --out", 1),
    (["--out", "{tmp}/full"], "the folder is not empty and holds no ladder", 1),
    (["--out", "{tmp}/cnn-ladder"], "holds a ladder of other settings (--track cnn, --device cpu)", 1),
])
def test_bad_flags_and_folders_are_one_line_each(flags, says, code, tmp_path, tiny_idx_dir, capsys):
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("mine")
    ladder.write_plan(tmp_path / "cnn-ladder", "cnn", ladder.plan("cnn", "cpu"), "cpu", None, {})
    flags = [f.format(tmp=tmp_path) for f in flags]
    base = ["--data-dir", str(tiny_idx_dir)] if "--data-dir" not in flags else []
    assert exit_code(["ladder", "--device", "cpu", *base, *flags]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and says in err and err.startswith("mnistlab ladder: error:")
    assert (tmp_path / "full").is_dir() and list((tmp_path / "full").iterdir()) == [tmp_path / "full" / "notes.txt"]


def test_a_run_folder_of_other_settings_in_the_ladder_is_refused_not_overwritten(tmp_path, tiny_idx_dir):
    out, rungs = tmp_path / "l", ladder.plan("mlp", "cpu", QUICK)
    ladder.write_plan(out, "mlp", rungs, "cpu", None, QUICK)
    engine.train(rungs[1].config.replace(lr=0.5), out=out / rungs[1].run_name(0), data_dir=tiny_idx_dir)
    with pytest.raises(runs.RunError, match=r"holds a run of other settings \(lr 0.5\)"):
        ladder.run_ladder("mlp", seeds=1, device="cpu", data_dir=tiny_idx_dir, out=out, overrides=QUICK)
    assert runs.read_config(out / rungs[1].run_name(0)).lr == 0.5


@pytest.mark.slow
def test_the_mlp_ladder_on_mnist_goes_from_the_notebooks_90_to_98(tmp_path, real_mnist):
    """The Done-when of the MLP track with one seed (about a minute of training on one core: the test process
    computes with one thread, conftest.py)."""
    result = ladder.run_ladder("mlp", seeds=1, device="cpu", data_dir=real_mnist, out=tmp_path / "mlp")
    accuracies = [r["test_accuracy_mean"] for r in result.rows]
    assert 0.885 <= accuracies[0] <= 0.91  # the notebook's "about 90%" (89.5% with seed 0)
    assert accuracies[-1] >= 0.98 and result.rows[-1]["time_to_98"] is not None
    assert result.rows[0]["time_to_98"] is None
