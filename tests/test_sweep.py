"""mnistlab sweep: a grid becomes batched groups and one run directory per configuration; the table
ranks them; a stopped sweep resumes; shards collected give the same table as one process."""

import csv
import json
import os
import subprocess
import sys

import pytest

from mnistlab.core import runs
from mnistlab.cli import main
from mnistlab.base.errors import UsageError
from mnistlab.commands.sweep import make_plan, parse_list, read_toml, shard_units


def sweep_args(data_dir, out, *extra):
    return ["sweep", "--recipe", "seed", "--epochs", "2", "--batch-size", "32", "--train-size", "160",
            "--val-size", "40", "--device", "cpu", "--data-dir", str(data_dir), "--out", str(out), "--no-plots",
            *extra]


GRID = ("--lr", "0.01,0.03", "--hidden", "32x16,64", "--seeds", "2")


def table(folder, name="results.csv"):
    with open(folder / name) as f:
        return list(csv.DictReader(f))


def test_flag_lists_take_the_fields_types():
    assert parse_list("lr", "0.001,0.003") == [0.001, 0.003]
    assert parse_list("hidden", "128x64,256") == [(128, 64), (256,)]
    assert parse_list("nesterov", "true,false") == [True, False]
    with pytest.raises(UsageError, match="--lr 0.1,fast: expected a comma list of numbers"):
        parse_list("lr", "0.1,fast")


def test_a_grid_is_every_combination_for_every_seed_grouped_by_what_can_train_together():
    plan = make_plan({"lr": [0.01, 0.03], "hidden": [(32, 16), (64,)]}, "seed", seeds=3)
    assert len(plan.runs) == 12 and plan.swept == ["hidden", "lr", "seed"]
    assert plan.runs[0].name == "hidden32x16-lr0.01-seed0"
    groups = plan.groups()
    assert [len(g) for g in groups] == [6, 6]  # one per architecture: the rates and seeds train batched
    for g in groups:  # members share their group's first seed's batch order and validation split
        assert {plan.runs[i].config.data_seed for i in g} == {plan.runs[g[0]].config.seed}
        assert {plan.runs[i].config.val_size for i in g} == {5000}  # a sweep ranks on a validation split


def test_a_toml_file_lists_the_swept_values(tmp_path):
    path = tmp_path / "sweep.toml"
    path.write_text('recipe = "seed"\nepochs = 3\nseeds = 2\nlr = [0.001, 0.01]\nhidden = [[128, 64], [256]]\n')
    plan = make_plan(read_toml(path))
    assert len(plan.runs) == 8 and {r.config.epochs for r in plan.runs} == {3}
    assert {r.config.hidden for r in plan.runs} == {(128, 64), (256,)}
    path.write_text('lr = [0.1]\nbogus = 1\n')
    with pytest.raises(UsageError, match="unknown keys bogus"):
        read_toml(path)


def test_shards_split_the_runs_into_whole_groups_when_they_can():
    plan = make_plan({"lr": [0.01, 0.03], "hidden": [(32, 16), (64,), (8,)]}, "seed", seeds=2)
    for count in (1, 2, 3, 4, 7):
        shares = [shard_units(plan, i, count) for i in range(count)]
        trained = sorted(i for share in shares for unit in share for i in unit)
        assert trained == list(range(len(plan.runs)))  # every run exactly once
        if count <= 3:
            assert all(sorted(unit) in plan.groups() for share in shares for unit in share)


def test_a_sweep_writes_a_run_per_configuration_and_ranks_them(tmp_path, tiny_idx_dir, capsys):
    out = tmp_path / "sweep"
    assert main(sweep_args(tiny_idx_dir, out, *GRID)) == 0
    printed = capsys.readouterr().out
    assert "best first" in printed and "val acc mean" in printed
    found = runs.list_runs(out / "runs")
    assert len(found) == 8 and {r.state for r in found} == {"finished"}
    rows = table(out)
    assert len(rows) == 4 and all(r["seeds"] == "2" and r["finished"] == "2" for r in rows)
    means = [float(r["val_accuracy_mean"]) for r in rows]
    assert means == sorted(means, reverse=True)
    config = json.loads((out / "runs" / "hidden64-lr0.03-seed1" / "config.json").read_text())
    assert (config["seed"], config["data_seed"], config["lr"], config["hidden"]) == (1, 0, 0.03, [64])
    # Each run directory is a train run: evaluate reads it.
    assert main(["evaluate", str(out / "runs" / "hidden64-lr0.03-seed1"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 200


def test_a_stopped_sweep_resumes_and_ends_as_an_uninterrupted_one(tmp_path, tiny_idx_dir, monkeypatch, capsys):
    assert main(sweep_args(tiny_idx_dir, tmp_path / "whole", *GRID)) == 0
    commit, calls = runs.Run.commit, []

    def stop_midway(self, epoch, *args, **kwargs):
        calls.append(epoch)
        if len(calls) == 7:  # group 1: 4 epoch-0 commits, then 2 of epoch 1's 4
            raise KeyboardInterrupt
        return commit(self, epoch, *args, **kwargs)

    monkeypatch.setattr(runs.Run, "commit", stop_midway)
    assert main(sweep_args(tiny_idx_dir, tmp_path / "split", *GRID)) == 130
    assert "mnistlab sweep --resume" in capsys.readouterr().err
    monkeypatch.setattr(runs.Run, "commit", commit)
    assert main(["sweep", "--resume", str(tmp_path / "split"), "--data-dir", str(tiny_idx_dir), "--no-plots"]) == 0
    assert table(tmp_path / "split") == table(tmp_path / "whole")


def test_a_diverging_configuration_is_marked_and_the_others_finish(tmp_path, tiny_idx_dir, capsys):
    out = tmp_path / "sweep"
    assert main(sweep_args(tiny_idx_dir, out, "--lr", "0.03,100000")) == 0
    rows = {r["lr"]: r for r in table(out, "runs.csv")}
    assert rows["100000.0"]["state"] == "diverged" and rows["0.03"]["state"] == "finished"
    assert "diverged" in capsys.readouterr().out
    # The run itself says so: `runs` lists it as diverged, and --resume does not train it again.
    assert {r.name: r.state for r in runs.list_runs(out)}["lr100000.0"] == "diverged"


def test_two_shards_collected_give_the_unsharded_table(tmp_path, tiny_idx_dir):
    assert main(sweep_args(tiny_idx_dir, tmp_path / "one", *GRID)) == 0
    for shard in ("0/2", "1/2"):
        assert main(sweep_args(tiny_idx_dir, tmp_path / "two", *GRID, "--shard", shard)) == 0
    assert not (tmp_path / "two" / "results.csv").exists()  # no shard knows when the others are done
    assert main(["sweep", "--collect", str(tmp_path / "two"), "--no-plots"]) == 0
    assert table(tmp_path / "two") == table(tmp_path / "one")


@pytest.mark.parametrize("args, message", [
    (["--shard", "2/2"], "--shard 2/2: I must be from 0 to N-1"),
    (["--lr", "0.1,x"], "--lr 0.1,x: expected a comma list of numbers"),
    (["--seed", "0,1", "--seeds", "3"], "not both"),
])
def test_bad_sweep_flags_are_one_line(tmp_path, tiny_idx_dir, capsys, args, message):
    assert main(sweep_args(tiny_idx_dir, tmp_path / "s", *args)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_under_torchrun_each_process_trains_its_share_and_rank_0_writes_the_table(tmp_path, tiny_idx_dir):
    assert main(sweep_args(tiny_idx_dir, tmp_path / "one", *GRID)) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "mnistlab", *sweep_args(tiny_idx_dir, tmp_path / "two", *GRID)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("best first") == 1  # rank 0 alone printed the table
    assert table(tmp_path / "two") == table(tmp_path / "one")
    assert "(shard 0/2)" in done.stdout + done.stderr and "(shard 1/2)" in done.stdout + done.stderr


def test_a_configuration_that_learned_nothing_is_marked_in_both_tables(tmp_path, tiny_idx_dir):
    """A rate so small that the loss stays at ln(10) learns nothing, and the sweep's tables say so with the
    run's own hint, beside a rate that learns."""
    out = tmp_path / "sweep"
    # The default recipe without shifts learns the tiny dataset (its class is a block's position) in 2 epochs.
    assert main([*sweep_args(tiny_idx_dir, out), "--recipe", "default", "--shift", "0", "--lr", "1e-7,0.1"]) == 0
    runs_rows = {r["lr"]: r for r in table(out, "runs.csv")}
    assert runs_rows["1e-07"]["learned_nothing"] == "True"
    assert "learned nothing" in runs_rows["1e-07"]["hint"] and "higher --lr" in runs_rows["1e-07"]["hint"]
    assert runs_rows["0.1"]["learned_nothing"] == "False" and runs_rows["0.1"]["hint"] == ""
    results = {r["lr"]: r for r in table(out)}
    assert results["1e-07"]["learned_nothing"] == "1" and results["0.1"]["learned_nothing"] == "0"
