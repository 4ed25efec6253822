"""The engine: one lifecycle and one loop for every kind of training, and the events it says them in.

What is specified here: the loop exists once (every trainee kind runs through `engine.train_epoch`);
a run says what happens as events, into events.jsonl and to `on_event`, and another process can
follow them live; a run that learns nothing says so; `--target-accuracy` stops at the target; a
sweep's member and the single run of its config start equal and stay within float rounding.
"""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from mnistlab.base.config import RECIPES, recipe
from mnistlab.base.errors import UsageError
from mnistlab.cli import main
from mnistlab.core import batched, engine, events, runs, training

from conftest import Killed, kill_at

CPU = torch.device("cpu")


def quick(name="default", **overrides):
    # No shifts unless asked: the tiny dataset's class *is* the position of a block.
    base = dict(epochs=2, batch_size=32, device="cpu", shift=0)
    return recipe(name, **{**base, **overrides})


# ---------------------------------------------------------------------------
# One loop

def test_every_kind_of_trainee_runs_through_the_one_loop(tmp_path, tiny_idx_dir, monkeypatch):
    calls = []
    real = engine.train_epoch
    monkeypatch.setattr(engine, "train_epoch", lambda trainee, on_step=None: (
        calls.append(type(trainee).__name__), real(trainee, on_step))[1])
    engine.train(quick(epochs=1), out=tmp_path / "one", data_dir=tiny_idx_dir)
    engine.train(quick(epochs=1, ensemble=2), out=tmp_path / "ensemble", data_dir=tiny_idx_dir)
    engine.train_group([tmp_path / "a", tmp_path / "b"], [quick(epochs=1, seed=1, data_seed=0),
                                                          quick(epochs=1, seed=2, data_seed=0)],
                       data_dir=tiny_idx_dir)
    assert calls == ["Trainee", "Group", "Group"]


@pytest.mark.parametrize("fast", [False, True])
def test_a_trainee_is_what_the_notebook_writes_zero_grad_loss_backward_step(tiny_idx_dir, fast):
    """Through the engine's loop, a network trains as the notebook's five lines train it: bitwise with
    autograd's step; to float rounding with the MLP's step written by hand (core/fused.py), the default on
    the CPU."""
    config = quick("seed", epochs=1)
    splits = training.load_splits(config, tiny_idx_dir, CPU)
    ours = training.build(config, splits, CPU)
    assert ours.fast is not None
    if not fast:
        ours.fast = None
    theirs = training.build(config, splits, CPU)  # the same seed: the same weights and batch order
    engine.train_epoch(ours)
    theirs.model.train()
    for xb, yb in theirs.batches.epoch(theirs.generator):
        theirs.optimizer.zero_grad()
        loss = theirs.loss_fn(theirs.model(xb), yb)
        loss.backward()
        theirs.optimizer.step()
    for a, b in zip(ours.model.parameters(), theirs.model.parameters(), strict=True):
        if fast:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        else:
            assert torch.equal(a, b)


# ---------------------------------------------------------------------------
# Events

def test_a_run_says_what_happens_as_events_into_its_events_jsonl_and_to_on_event(tmp_path, tiny_idx_dir):
    heard = []
    result = engine.train(quick(epochs=2), out=tmp_path / "r", data_dir=tiny_idx_dir, on_event=heard.append)
    written = events.read(tmp_path / "r" / "events.jsonl")
    assert written == json.loads(json.dumps(heard))  # the file holds exactly what was said, in order
    kinds = [e["type"] for e in written if e["type"] not in ("progress", "hint", "note")]
    assert kinds == ["started", "epoch", "epoch", "ended"]
    started, ended = written[0], written[-1]
    assert started["run"] == str(tmp_path / "r") and started["epochs"] == 2 and started["epoch"] == 0
    assert started["dataset"] == "mnist" and started["steps_per_epoch"] == 19 and not started["resumed"]
    assert [e["row"] for e in written if e["type"] == "epoch"] == result.rows
    assert ended["status"] == "finished" and ended["epochs"] == 2
    assert all(set(e) >= {"type", "time", "run"} for e in written)


def test_progress_events_come_at_most_twice_a_second_with_the_running_loss(tmp_path, tiny_idx_dir, monkeypatch):
    clock = iter(range(10**6))  # every reading of the clock one second later: each step is due a progress event
    monkeypatch.setattr(engine.time, "perf_counter", lambda: float(next(clock)))
    heard = []
    engine.train(quick(epochs=1), out=tmp_path / "r", data_dir=tiny_idx_dir, on_event=heard.append)
    progress = [e for e in heard if e["type"] == "progress"]
    assert [e["step"] for e in progress] == list(range(1, 19))  # not after the last step: the epoch line follows
    assert all(e["steps"] == 19 and e["epoch"] == 1 and e["steps_per_second"] > 0 for e in progress)
    assert all(0 < e["loss"] < 10 for e in progress)


def test_a_resumed_run_appends_to_its_events(tmp_path, tiny_idx_dir):
    engine.train(quick(epochs=2), out=tmp_path / "r", data_dir=tiny_idx_dir, stop_after=1)
    engine.resume(tmp_path / "r", data_dir=tiny_idx_dir)
    said = [(e["type"], e.get("status"), e.get("resumed")) for e in events.read(tmp_path / "r" / "events.jsonl")
            if e["type"] in ("started", "ended")]
    assert said == [("started", None, False), ("ended", "stopped", None), ("started", None, True),
                    ("ended", "finished", None)]


def test_a_line_cut_off_by_a_kill_is_skipped_and_the_rest_is_read(tmp_path, tiny_idx_dir):
    engine.train(quick(epochs=1), out=tmp_path / "r", data_dir=tiny_idx_dir)
    log = tmp_path / "r" / "events.jsonl"
    whole = events.read(log)
    with open(log, "a") as f:
        f.write('{"type": "progress", "time": 1')  # a kill in the middle of a write
    assert events.read(log) == whole
    assert list(runs.follow(tmp_path / "r")) == whole


def test_follow_yields_events_as_they_are_written_and_ends_when_the_writer_lets_go(tmp_path, tiny_idx_dir):
    run = runs.create(tmp_path / "r", quick())
    seen = []
    follower = runs.follow(tmp_path / "r", poll=0.01)
    run.emit(events.event("note", run.path, message="one"))
    run._events._file.flush()
    seen.append(next(follower)["message"])
    run.emit(events.event("note", run.path, message="two"))
    run._events._file.flush()
    seen.append(next(follower)["message"])
    run.close()  # the writer lets go: the follower reads what is left and ends
    assert seen == ["one", "two"] and list(follower) == []


def test_a_full_disk_stops_the_event_log_but_never_the_run(tmp_path, tiny_idx_dir, monkeypatch):
    real = open

    def full(path, *args, **kwargs):
        if str(path).endswith("events.jsonl"):
            raise OSError(28, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full)
    result = engine.train(quick(epochs=1), out=tmp_path / "r", data_dir=tiny_idx_dir)
    assert result.summary["epochs"] == 1 and not (tmp_path / "r" / "events.jsonl").exists()


@pytest.mark.slow
def test_runs_follow_prints_a_run_live_from_another_process_and_ends_with_it(tmp_path, tiny_idx_dir):
    env = {**os.environ, "MNISTLAB_PROGRESS_SECONDS": "0"}
    trainer = subprocess.Popen(
        [sys.executable, "-m", "mnistlab", "train", "--out", str(tmp_path / "r"), "--data-dir", str(tiny_idx_dir),
         "--epochs", "300", "--batch-size", "8", "--device", "cpu", "--no-plots", "--recipe", "seed"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 60
    while not (tmp_path / "r" / "events.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    sizes = []
    follower = subprocess.Popen([sys.executable, "-m", "mnistlab", "runs", str(tmp_path / "r"), "--follow",
                                 "--json"], stdout=subprocess.PIPE, text=True, env=env)
    followed = []
    for line in follower.stdout:
        followed.append(json.loads(line))
        sizes.append((tmp_path / "r" / "events.jsonl").stat().st_size)
    assert follower.wait(timeout=120) == 0 and trainer.wait(timeout=120) == 0
    assert sizes[0] < sizes[-1]  # the file grew while it was followed
    assert followed[0]["type"] == "started" and followed[-1] == {**followed[-1], "type": "ended",
                                                                 "status": "finished", "epochs": 300}
    assert followed == events.read(tmp_path / "r" / "events.jsonl")


# ---------------------------------------------------------------------------
# Learning nothing is said

def test_a_run_that_learns_nothing_says_so_naming_the_rate_and_what_to_try(tmp_path, tiny_idx_dir):
    lines = []
    result = engine.train(quick("seed", lr=1e-7), out=tmp_path / "r", data_dir=tiny_idx_dir, log=lines.append)
    hints = [line for line in lines if "learned nothing" in line]
    assert len(hints) == 1 and "lr 1e-07" in hints[0] and "--lr" in hints[0] and "\n" not in hints[0]
    assert result.summary["hint"] == runs.learning_hint(result.rows, 10, 1e-7) is not None
    assert runs.info(tmp_path / "r").problem.startswith("epoch 2: the training loss")


def test_the_learning_hint_speaks_of_the_latest_epoch():
    def rows(*losses):
        return [{"epoch": k, "train_loss": v} for k, v in enumerate(losses, 1)]

    assert "learned nothing" in runs.learning_hint(rows(2.30), 10, 0.1)
    assert runs.learning_hint(rows(2.30, 0.9), 10, 0.1) is None  # stuck at first, learning now
    assert "rose above epoch 1's" in runs.learning_hint(rows(0.9, 0.5, 1.2), 10, 0.1)
    assert runs.learning_hint(rows(1.9, 0.9), 10, 0.003) is None  # the notebook's first epochs
    assert "ln(3)" in runs.learning_hint(rows(1.0986), 3, 0.1)


def test_the_learning_hint_names_the_likely_cause():
    stalled = [{"epoch": 1, "train_loss": 2.30}, {"epoch": 2, "train_loss": 2.29}]
    # Enough steps at an ordinary rate: the rate may be too high (dead units), or the seed unlucky.
    assert "try a lower --lr such as 0.01" in runs.learning_hint(stalled, 10, 0.1, 469, 128)
    # A tiny rate: raise it, whatever the number of steps.
    assert "try a higher --lr such as 1e-05" in runs.learning_hint(stalled, 10, 1e-7, 469, 128)
    assert "higher --lr" in runs.learning_hint(stalled, 10, 1e-7, 2, 256)
    # 500 images in batches of 256, two epochs: 4 steps are too few to tell anything about the rate.
    hint = runs.learning_hint(stalled, 10, 0.1, 2, 256)
    assert "only 4 optimiser steps (2 an epoch, batches of 256)" in hint and "--epochs" in hint and "lower" not in hint


def test_a_small_dataset_in_large_batches_is_told_to_take_more_steps(tmp_path, tiny_idx_dir):
    lines = []
    result = engine.train(quick("seed", epochs=1, batch_size=256), out=tmp_path / "r", data_dir=tiny_idx_dir,
                          log=lines.append)
    steps = json.loads((tmp_path / "r" / "model.json").read_text())["steps_per_epoch"]
    said = f"only {steps} optimiser steps ({steps} an epoch, batches of 256)"
    assert steps < runs.FEW_STEPS and said in result.summary["hint"]
    assert [line for line in lines if "learned nothing" in line] == [result.summary["hint"]]


@pytest.mark.slow
def test_the_default_recipe_that_learned_nothing_in_the_issue_now_says_why(tmp_path, real_mnist, capsys):
    assert main(["train", "--recipe", "default", "--seed", "2", "--data-seed", "0", "--epochs", "2",
                 "--train-size", "20000", "--data-dir", str(real_mnist), "--out", str(tmp_path / "r"),
                 "--no-plots", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    # The issue's run stayed at chance (11.35%); with today's step it learns (91% here). Either way the hint
    # tells the truth: a line and summary.json's hint exactly when the run is at chance.
    at_chance = summary["test_accuracy"] < 0.2
    assert ("learned nothing" in out) == at_chance and bool(summary["hint"]) == at_chance


# ---------------------------------------------------------------------------
# --target-accuracy

def test_target_accuracy_stops_at_the_first_epoch_that_reaches_it_and_records_the_time(tmp_path, tiny_idx_dir):
    heard = []
    result = engine.train(quick("seed", lr=0.05, epochs=8, target_accuracy=0.9), out=tmp_path / "r", data_dir=tiny_idx_dir,
                          on_event=heard.append)
    s = result.summary
    assert s["epochs"] < 8 and s["finished"] and s["status"] == "finished"
    assert s["test_accuracy"] >= 0.9 and all(r["test_accuracy"] < 0.9 for r in result.rows[:-1])
    assert s["time_to_target"] == pytest.approx(sum(r["seconds"] for r in result.rows))
    assert heard[-1]["status"] == "target"
    assert runs.info(tmp_path / "r").state == "finished"


def test_target_accuracy_is_measured_on_the_validation_split_when_there_is_one(tmp_path, tiny_idx_dir):
    result = engine.train(quick("seed", lr=0.05, epochs=8, target_accuracy=0.9, val_size=100, eval_every_epoch=False),
                          out=tmp_path / "r", data_dir=tiny_idx_dir)
    assert result.rows[-1]["val_accuracy"] >= 0.9 and all(r["val_accuracy"] < 0.9 for r in result.rows[:-1])
    assert result.rows[-1]["test_accuracy"] is not None  # measured where it stopped, for the summary
    assert all(r["test_accuracy"] is None for r in result.rows[:-1])


# ---------------------------------------------------------------------------
# A sweep's member and the single run of its config

def _member_and_single(tmp_path, data_dir, config):
    """Member 1 of a group of two (a sweep's) and the single run of its config, one step each."""
    configs = [config.replace(seed=7), config]
    splits = training.load_splits(config, data_dir, CPU)
    group = batched.build_group(configs, splits, CPU)
    single = training.build(config, splits, CPU)
    return group, single, splits


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_member_and_the_single_run_start_equal_and_a_step_later_agree_to_float_rounding(tmp_path, tiny_idx_dir,
                                                                                         name):
    """The reproducibility claim of the docs, for every recipe as it is (pixel shifts included): the same
    initial weights and the same batches, bitwise; after a step, the same weights to float rounding (the
    batched kernels add in another order than a single network's)."""
    config = recipe(name, epochs=1, batch_size=32, device="cpu", train_size=256, data_seed=3)
    group, single, _ = _member_and_single(tmp_path, tiny_idx_dir, config)
    mine = group.stack.member_model(1)
    for key, value in single.model.state_dict().items():
        assert torch.equal(mine[key], value)
    ours, theirs = group.batches.epoch(group.generator), single.batches.epoch(single.generator)
    for (xa, ya), (xb, yb) in zip(ours, theirs, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    group, single, splits = _member_and_single(tmp_path, tiny_idx_dir, config)
    group.begin_epoch(1, [True, True])
    for trainee in (group, single):
        trainee.train()
        xb, yb = next(trainee.batches.epoch(trainee.generator))
        trainee.zero_grad()
        loss = trainee.loss(xb, yb)
        trainee.backward(loss)
        trainee.step(loss, 0)
    mine = group.stack.member_model(1)
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(mine[key].float(), value.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in RECIPES if RECIPES[n].model == "mlp"])
def test_over_an_epoch_an_mlp_member_and_its_single_run_stay_within_float_tolerance(tmp_path, tiny_idx_dir, name):
    """For the MLP recipes the rounding differences stay small over an epoch; the docs say where they do not
    (the CNN's batch norm at lr 0.05 multiplies them about tenfold a step)."""
    config = recipe(name, epochs=1, batch_size=32, device="cpu", train_size=256, data_seed=3)
    group, single, _ = _member_and_single(tmp_path, tiny_idx_dir, config)
    group.begin_epoch(1, [True, True])
    engine.train_epoch(group)
    engine.train_epoch(single)
    mine = group.stack.member_model(1)
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(mine[key], value, rtol=1e-4, atol=1e-5)


def test_the_sweep_and_train_data_seed_give_the_same_run(tmp_path, tiny_idx_dir):
    """What the docs tell a user: `mnistlab train --seed N --data-seed D` reproduces the sweep's seed-N run."""
    assert main(["sweep", "--recipe", "default", "--lr", "0.05,0.1", "--seeds", "2", "--epochs", "2",
                 "--batch-size", "32", "--train-size", "300", "--val-size", "60", "--device", "cpu", "--data-dir",
                 str(tiny_idx_dir), "--out", str(tmp_path / "s"), "--no-plots"]) == 0
    member = tmp_path / "s" / "runs" / "lr0.1-seed1"
    config = json.loads((member / "config.json").read_text())
    assert config["data_seed"] == 0 and config["shift"] == 1  # the group's order; the recipe's shifts
    assert main(["train", "--recipe", "default", "--lr", "0.1", "--seed", "1", "--data-seed", "0", "--epochs", "2",
                 "--batch-size", "32", "--train-size", "300", "--val-size", "60", "--device", "cpu", "--data-dir",
                 str(tiny_idx_dir), "--out", str(tmp_path / "t"), "--no-plots"]) == 0
    a, b = load_file(str(member / "model.safetensors")), load_file(str(tmp_path / "t" / "model.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# An ensemble killed mid-commit resumes to the run trained straight through

@pytest.mark.parametrize("n", [5, 7])  # epoch 1's commit: after state.pt, and after the model files
def test_an_ensemble_resumed_after_a_kill_equals_one_trained_straight_through(tmp_path, tiny_idx_dir, monkeypatch,
                                                                              n):
    config = quick("default", epochs=2, ensemble=3)
    engine.train(config, out=tmp_path / "whole", data_dir=tiny_idx_dir)
    kill_at(monkeypatch, tmp_path / "split", n)
    with pytest.raises(Killed):
        engine.train(config, out=tmp_path / "split", data_dir=tiny_idx_dir)
    monkeypatch.undo()
    engine.resume(tmp_path / "split", data_dir=tiny_idx_dir)
    a, b = load_file(str(tmp_path / "whole" / "model.safetensors")), load_file(str(tmp_path / "split" /
                                                                                   "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_lines_of_a_run_can_be_french_in_the_courses_words(tmp_path, tiny_idx_dir):
    said = []
    engine.train(quick("seed", epochs=1, lr=0.05), out=tmp_path / "r", data_dir=tiny_idx_dir, log=said.append,
                 lang="fr")
    assert said[0] == f"dossier: {tmp_path / 'r'}" and said[1].startswith("recette seed, avec ")
    assert said[2].startswith("appareil: cpu") and said[3].startswith("données: mnist")
    epoch = next(line for line in said if line.startswith("époque"))
    assert "perte d'entraînement" in epoch and "exactitude test" in epoch  # `inspect --lang fr`'s words
    with pytest.raises(UsageError, match="lang must be en or fr"):
        engine.train(quick(), out=tmp_path / "x", data_dir=tiny_idx_dir, lang="de")
