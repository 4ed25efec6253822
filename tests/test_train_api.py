"""Training from the page (the lab's Train and Runs views): `mnistlab serve FOLDER` lists every run in the
folder and serves each as a model as it commits epochs; POST /api/runs starts jobs that are ordinary
`mnistlab train` and `sweep` processes, queued and bounded; their events stream live; DELETE stops them
and the run stays resumable. The jobs here are real processes on the tiny IDX dataset (marked slow);
the bounds are tested without starting any, by holding a run's lock in the test process so that the
server counts it as a training process."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from conftest import write_fake_dataset

pytest.importorskip("fastapi", reason="mnistlab serve needs the serve extra: pip install -e '.[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from mnistlab.base.config import recipe  # noqa: E402
from mnistlab.cli import SWEEP_FIELDS, build_parser, config_from_args, main  # noqa: E402
from mnistlab.commands.jobs import Bounds, TrainSettings, command, configs_of  # noqa: E402
from mnistlab.core.runs import lock_holder  # noqa: E402
from mnistlab.commands.serve import create_app  # noqa: E402
from mnistlab.commands.sweep import make_plan, parse_list  # noqa: E402
from mnistlab.core import runs  # noqa: E402
from mnistlab.core.engine import resume, train  # noqa: E402
from mnistlab.core.evaluation import evaluate  # noqa: E402
from test_serve import error_of  # noqa: E402

QUICK = {"recipe": "seed", "lr": 0.05, "epochs": 2}  # learns the tiny dataset in two epochs


@pytest.fixture
def folder(tmp_path, tiny_run) -> Path:
    """A served folder holding one finished run, `tiny`."""
    served = tmp_path / "runs"
    shutil.copytree(tiny_run, served / "tiny")
    return served


def app_of(folder, tiny_idx_dir, **bounds):
    return create_app(folder=folder, data_dir=tiny_idx_dir, bounds=Bounds(**{"jobs": 1, **bounds}))


@pytest.fixture
def client(folder, tiny_idx_dir):
    with TestClient(app_of(folder, tiny_idx_dir)) as c:
        yield c


def cli_runs(folder) -> dict:
    """`mnistlab runs FOLDER --json`, by name."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["runs", str(folder), "--json"]) == 0
    return {run["name"]: run for run in json.loads(out.getvalue())}


def sse(text: str) -> list[tuple[str, str | None, dict]]:
    """A server-sent event stream as (event name, id, data) per message; comments skipped."""
    out = []
    for block in text.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if line and not line.startswith(":"))
        if fields:
            out.append((fields.get("event", "message"), fields.get("id"), json.loads(fields["data"])))
    return out


def hold_a_run(folder) -> runs.Run:
    """A run in the folder whose lock this process holds: the server counts it as a training process."""
    return runs.create(folder / "held", recipe("seed", device="cpu"))


# ---------------------------------------------------------------------------
# The folder's runs and models, as they are now


def test_every_run_in_the_folder_is_listed_with_the_numbers_mnistlab_runs_gives(client, folder):
    listed = client.get("/api/runs").json()["runs"]
    assert [r["name"] for r in listed] == ["tiny"]
    tiny, cli = listed[0], cli_runs(folder)["tiny"]
    assert (tiny["state"], tiny["epochs"], tiny["total_epochs"]) == (cli["state"], cli["epochs"], cli["total_epochs"])
    assert tiny["test_accuracy"] == cli["test_accuracy"] and tiny["train_seconds"] == cli["train_seconds"]
    assert tiny["rows"] == runs.read_metrics(folder / "tiny")  # the curves are metrics.csv's rows
    assert tiny["config"] == json.loads((folder / "tiny" / "config.json").read_text())
    assert tiny["model"] == "tiny" and tiny["group"] is None and tiny["mine"] is False
    assert client.get("/api/runs/tiny").json() == tiny


def test_a_name_that_is_no_run_of_the_folder_is_404_even_as_a_path_out_of_it(client, folder, tiny_run):
    assert "no run named 'nothing'" in error_of(client.get("/api/runs/nothing"), 404)
    outside = os.path.relpath(tiny_run, folder)  # ../../.../tiny: a run, but not in the folder
    for name in (quote(n, safe="") for n in (outside, str(tiny_run), "tiny/../tiny")):  # sent as they are
        error_of(client.get(f"/api/runs/{name}"), 404)
        error_of(client.delete(f"/api/runs/{name}"), 404)
        error_of(client.get(f"/api/runs/{name}/events"), 404)


def test_runs_appear_as_models_once_they_are_in_the_folder_named_by_their_path(client, folder, tiny_run):
    assert [m["name"] for m in client.get("/api/models").json()["models"]] == ["tiny"]
    comparison = folder / "compare"
    shutil.copytree(tiny_run, comparison / "runs" / "lr0.1")
    (comparison / "sweep.json").write_text("{}")  # a sweep folder: its runs are in runs/
    time.sleep(1.1)  # the folder is looked at again at most once a second
    models = client.get("/api/models").json()
    assert {m["name"] for m in models["models"]} == {"tiny", "compare/runs/lr0.1"}
    assert client.get("/api/models/compare/runs/lr0.1").json()["name"] == "compare/runs/lr0.1"
    assert client.get("/api/models/compare/runs/lr0.1/confusion").json()["model"] == "compare/runs/lr0.1"
    assert client.get("/api/runs/compare/runs/lr0.1").json()["group"] == "compare"
    r = client.post("/api/predict?model=compare/runs/lr0.1", json={"image": [[0] * 28] * 10 + [[255] * 28] * 4
                                                                   + [[0] * 28] * 14})
    assert r.status_code == 200 and r.json()["model"] == "compare/runs/lr0.1"


def test_a_run_that_commits_another_epoch_is_served_at_its_new_commit(client, folder, tiny_idx_dir):
    train(recipe("seed", epochs=1, lr=0.05, device="cpu"), out=folder / "grows", data_dir=tiny_idx_dir)
    time.sleep(1.1)  # the folder is looked at again at most once a second
    before = client.get("/api/models/grows/confusion").json()
    resume(folder / "grows", epochs=2, data_dir=tiny_idx_dir)  # as a training process does, epoch by epoch
    time.sleep(1.1)
    after = client.get("/api/models/grows/confusion").json()
    commit = json.loads((folder / "grows" / "model.json").read_text())["commit"]
    assert after["commit"] == commit != before["commit"] and commit.startswith("2-")
    assert client.get("/api/models/grows").json()["metrics"]["epochs"] == 2
    assert after["confusion"] == evaluate(folder / "grows").confusion


def test_an_empty_folder_serves_no_model_yet_and_says_so(tmp_path, tiny_idx_dir):
    (tmp_path / "empty").mkdir()
    with TestClient(app_of(tmp_path / "empty", tiny_idx_dir)) as c:
        assert c.get("/api/models").json() == {"models": [], "default": None}
        assert "no model is served yet" in error_of(c.post("/api/predict", json={"image": [[9] * 28] * 28}), 404)
        assert c.get("/api/runs").json() == {"runs": []}
        assert c.get("/api/training").json()["folder"] == "empty"


def test_without_a_folder_there_is_nothing_to_train_and_no_runs(tiny_run):
    from mnistlab.commands.serve import load_models

    with TestClient(create_app(load_models([tiny_run]))) as c:
        training = c.get("/api/training").json()
        assert training["enabled"] is False and training["folder"] is None and "mnistlab serve FOLDER" in training["reason"]
        assert c.get("/api/runs").json() == {"runs": []}
        assert "serve FOLDER" in error_of(c.post("/api/runs", json=QUICK), 404)


# ---------------------------------------------------------------------------
# The events, as server-sent events


def test_a_runs_events_stream_from_its_start_then_end_with_its_state(client, folder):
    written = [json.loads(line) for line in (folder / "tiny" / "events.jsonl").read_text().splitlines()]
    r = client.get("/api/runs/tiny/events")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    messages = sse(r.text)
    assert [data for kind, _, data in messages if kind == "message"] == written  # the engine's events, as they are
    assert messages[-1] == ("end", None, {"runs": {"tiny": "finished"}})
    # A client that reconnects with the last id it saw gets the rest only.
    third = messages[2][1]
    again = sse(client.get("/api/runs/tiny/events", headers={"Last-Event-ID": third}).text)
    assert [data for kind, _, data in again if kind == "message"] == written[3:]
    assert sse(client.get("/api/runs/tiny/events", headers={"Last-Event-ID": "7"}).text)[0][2] == written[0]


def test_several_runs_stream_in_one_connection_each_event_named_by_its_run(client, folder, tiny_run):
    shutil.copytree(tiny_run, folder / "other")
    r = client.get("/api/events?run=tiny&run=other")
    messages = sse(r.text)
    names = [data["name"] for kind, _, data in messages if kind == "message"]
    assert set(names) == {"tiny", "other"} and len(names) == 2 * len(runs_events(folder / "tiny"))
    assert all(data["event"]["type"] for kind, _, data in messages if kind == "message")
    assert messages[-1][2] == {"runs": {"tiny": "finished", "other": "finished"}}
    error_of(client.get("/api/events?run=tiny&run=nothing"), 404)
    error_of(client.get("/api/events"), 422)


def runs_events(run_dir):
    return (run_dir / "events.jsonl").read_text().splitlines()


# ---------------------------------------------------------------------------
# What may be asked: settings, and the bounds


@pytest.mark.parametrize("settings, needle", [
    ({"dataset": "imagenet"}, "dataset 'imagenet' is not one this server can train on; choose one of"),
    ({"dataset": "folder:/etc"}, "is not one this server can train on"),
    ({"lr": 0.1, "lrs": [0.1, 0.2]}, "give lr (one run) or lrs (a comparison), not both"),
    ({"lrs": [0.1, 0.1]}, "lrs: a learning rate is listed twice"),
    ({"lrs": [0.1] * 9}, "lrs: List should have at most 8 items"),
    ({"lr": -1}, "lr: Input should be greater than 0"),
    ({"epochs": 21}, "epochs 21: this server trains at most 20 epochs a run (its operator's --max-epochs)"),
    ({"recipe": "cnn", "hidden": [32]}, "hidden sizes apply to the mlp"),
    ({"hidden": [100000, 100000]}, "hidden sizes must be 1 to 16 integers"),
    ({"recipe": "nope"}, "recipe: Input should be"),
    ({"momentum": 0.9}, "momentum: Extra inputs are not permitted"),
])
def test_bad_settings_are_one_line_422_and_start_nothing(client, folder, settings, needle):
    assert needle in error_of(client.post("/api/runs", json=settings), 422)
    assert {p.name for p in folder.iterdir()} <= {"tiny", ".jobs"} and not any((folder / ".jobs").glob("*.json"))


def test_the_operators_caps_on_epochs_and_training_images_are_one_line_each(folder, tiny_idx_dir):
    with TestClient(app_of(folder, tiny_idx_dir, max_epochs=3, max_train_size=500)) as c:
        assert "at most 3 epochs" in error_of(c.post("/api/runs", json={"epochs": 4}), 422)
        line = error_of(c.post("/api/runs", json={"epochs": 2}), 422)
        assert line.startswith("all the training images (train_size 0): this server trains on at most 500 images")
        assert "--max-train-size" in line
        assert "train_size 501" in error_of(c.post("/api/runs", json={"epochs": 2, "train_size": 501}), 422)
        limits = c.get("/api/training").json()["limits"]
        assert limits == {"jobs": 1, "queue": 8, "per_client": 2, "max_epochs": 3, "max_train_size": 500, "max_lrs": 8,
                          "tensorboard": False}


def test_a_body_that_is_not_json_settings_is_refused_in_one_line(client):
    assert "malformed JSON" in error_of(client.post("/api/runs", content=b"{", headers={"content-type": "application/json"}), 400)
    assert "send the settings as application/json" in error_of(client.post("/api/runs", content=b"lr=1"), 415)
    error_of(client.post("/api/runs", content=b"[" * 20000, headers={"content-type": "application/json"}), 413)


def test_training_off_is_one_line(folder, tiny_idx_dir):
    with TestClient(app_of(folder, tiny_idx_dir, jobs=0)) as c:
        assert "--train-jobs 0" in error_of(c.post("/api/runs", json=QUICK), 403)
        assert c.get("/api/training").json()["enabled"] is False


def test_a_busy_server_queues_jobs_bounded_per_client_and_in_all_and_each_refusal_is_one_line(folder, tiny_idx_dir):
    held = hold_a_run(folder)  # a training process of the folder: the one process allowed is taken
    try:
        app = app_of(folder, tiny_idx_dir, queue=2, per_client=1)
        with TestClient(app) as me, TestClient(app, client=("10.0.0.2", 1)) as you, \
                TestClient(app, client=("10.0.0.3", 1)) as third:
            started = me.post("/api/runs", json=QUICK)
            assert started.status_code == 202 and started.json() == {"runs": ["seed-mnist"], "queued": 1}
            assert "the most one client may have here (1)" in error_of(me.post("/api/runs", json=QUICK), 429)
            assert you.post("/api/runs", json={**QUICK, "lrs": [0.01, 0.1], "lr": None}).json() == {
                "runs": ["seed-mnist-lrs/runs/lr0.01", "seed-mnist-lrs/runs/lr0.1"], "queued": 2}
            full = error_of(third.post("/api/runs", json=QUICK), 503)
            assert full == ("all 1 training process is busy and 2 jobs are waiting, the most this server queues; "
                            "try again when a run ends")

            listed = {r["name"]: r for r in me.get("/api/runs").json()["runs"]}
            assert listed["seed-mnist"]["state"] == "queued" and listed["seed-mnist"]["mine"]
            assert listed["seed-mnist"]["config"]["lr"] == 0.05 and listed["seed-mnist"]["total_epochs"] == 2
            assert listed["seed-mnist-lrs/runs/lr0.1"]["group"] == "seed-mnist-lrs"
            assert not listed["seed-mnist-lrs/runs/lr0.1"]["mine"]
            assert listed["held"]["state"] == "running"
            training = me.get("/api/training").json()
            assert (training["running"], training["queued"], training["yours"]) == (1, 2, 1)

            # Only a job's owner (or the server's own machine) takes it off the queue.
            assert "not started by you" in error_of(third.delete("/api/runs/seed-mnist"), 403)
            taken = you.delete("/api/runs/seed-mnist-lrs/runs/lr0.01").json()
            assert taken["runs"] == ["seed-mnist-lrs/runs/lr0.01", "seed-mnist-lrs/runs/lr0.1"]
            assert not (folder / "seed-mnist-lrs").exists()  # the folder made for it, removed
            error_of(me.get("/api/runs/seed-mnist-lrs/runs/lr0.1"), 404)
            assert third.post("/api/runs", json=QUICK).json() == {"runs": ["seed-mnist-2"], "queued": 2}
            assert me.delete("/api/runs/seed-mnist").status_code == 200
            assert third.delete("/api/runs/seed-mnist-2").status_code == 200
            assert "run tiny is not running here (it is finished); nothing to stop" == error_of(
                me.delete("/api/runs/tiny"), 409)
            # A run trained by someone else is stopped from the server's own machine only.
            assert "not started by you" in error_of(me.delete("/api/runs/held"), 403)
            assert me.get("/api/training").json()["queued"] == 0
    finally:
        held.close()


# ---------------------------------------------------------------------------
# The command a job runs: an ordinary train or sweep, with exactly the settings asked for


def test_a_jobs_command_line_makes_the_config_asked_for():
    bounds = Bounds(jobs=1)
    asked = TrainSettings(recipe="default", lr=0.02, batch_size=32, epochs=3, hidden=[64], optimizer="adamw",
                          shift=0, train_size=500, val_size=100, seed=4)
    [config] = configs_of(asked, bounds, ["mnist"])
    argv = command([config], "default-mnist", Path("/data"))
    assert argv[:4] == ["train", "--out", "default-mnist", "--no-plots"]
    assert config_from_args(build_parser().parse_args(argv)) == config
    assert not build_parser().parse_args(argv).tensorboard
    # `serve --tensorboard`: the page's runs write for TensorBoard, as `train --tensorboard` does
    assert build_parser().parse_args(command([config], "default-mnist", None, tensorboard=True)).tensorboard


def test_a_comparisons_members_are_exactly_the_single_runs_of_their_rates():
    bounds = Bounds(jobs=1)
    asked = TrainSettings(recipe="seed", lrs=[0.001, 0.01, 0.1], epochs=2, hidden=[32, 16], shift=1)
    configs = configs_of(asked, bounds, ["mnist"])
    argv = command(configs, "seed-mnist-lrs", None)
    args = build_parser().parse_args(argv)
    assert args.command == "sweep" and args.lr == "0.001,0.01,0.1"
    grid = {f.name: parse_list(f.name, getattr(args, f.name)) for f in SWEEP_FIELDS if getattr(args, f.name) is not None}
    plan = make_plan(grid, args.recipe)  # what `mnistlab sweep` plans from these flags
    # Each member: its single run's config, the batch order taken from the group's seed (the same seed here).
    assert [p.config for p in plan.runs] == [c.replace(data_seed=c.seed) for c in configs]
    assert [p.name for p in plan.runs] == ["lr0.001", "lr0.01", "lr0.1"]


# ---------------------------------------------------------------------------
# Real jobs: processes of their own


def wait_for(check, timeout=180.0, every=0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"waited {timeout} s")


@pytest.mark.slow
def test_a_run_started_from_the_page_trains_live_and_is_an_ordinary_run_the_cli_uses(client, folder, tiny_idx_dir):
    started = client.post("/api/runs", json=QUICK)
    assert started.status_code == 202 and started.json() == {"runs": ["seed-mnist"], "queued": 0}
    messages = sse(client.get("/api/runs/seed-mnist/events").text)  # until the run ends
    events = [data for kind, _, data in messages if kind == "message"]
    assert [e["type"] for e in events if e["type"] != "progress"][:1] == ["started"]
    assert [e["row"]["epoch"] for e in events if e["type"] == "epoch"] == [1, 2]
    assert events[-1]["type"] == "ended" and events[-1]["status"] == "finished"
    assert all(e["run"] == "seed-mnist" for e in events)  # the run's name in the folder
    assert messages[-1] == ("end", None, {"runs": {"seed-mnist": "finished"}})

    run = client.get("/api/runs/seed-mnist").json()
    cli = cli_runs(folder)["seed-mnist"]
    assert (run["state"], run["epochs"], run["test_accuracy"]) == (cli["state"], 2, cli["test_accuracy"]) == (
        "finished", 2, cli["test_accuracy"])
    assert run["mine"] and run["config"]["lr"] == 0.05 and run["config"]["recipe"] == "seed"
    # A model for Draw and Explore at once, without restarting the server, with evaluate's numbers.
    assert client.get("/api/models/seed-mnist/confusion").json()["confusion"] == evaluate(folder / "seed-mnist").confusion
    r = subprocess.run([sys.executable, "-m", "mnistlab", "evaluate", str(folder / "seed-mnist"), "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)["accuracy"] == run["test_accuracy"], r.stderr


@pytest.mark.slow
def test_learning_rates_compared_train_as_one_group_each_an_ordinary_run(client, folder):
    started = client.post("/api/runs", json={"recipe": "seed", "lrs": [0.005, 0.05], "epochs": 2}).json()
    names = ["seed-mnist-lrs/runs/lr0.005", "seed-mnist-lrs/runs/lr0.05"]
    assert started == {"runs": names, "queued": 0}
    messages = sse(client.get("/api/events", params={"run": names}).text)
    ended = {data["name"]: data["event"]["status"] for kind, _, data in messages
             if kind == "message" and data["event"]["type"] == "ended"}
    assert ended == dict.fromkeys(names, "finished")
    listed = {r["name"]: r for r in client.get("/api/runs").json()["runs"]}
    assert [listed[n]["config"]["lr"] for n in names] == [0.005, 0.05]
    assert all(listed[n]["group"] == "seed-mnist-lrs" and listed[n]["model"] == n for n in names)
    assert listed[names[1]]["rows"][-1]["train_loss"] < listed[names[0]]["rows"][-1]["train_loss"]
    assert cli_runs(folder)[names[0]]["state"] == "finished"


@pytest.mark.slow
def test_a_queued_job_starts_when_the_process_it_waits_for_ends(folder, tiny_idx_dir):
    held = hold_a_run(folder)
    with TestClient(app_of(folder, tiny_idx_dir)) as c:
        assert c.post("/api/runs", json=QUICK).json()["queued"] == 1
        time.sleep(1.5)
        assert c.get("/api/runs/seed-mnist").json()["state"] == "queued"
        held.close()  # the process it waited for is done: the server starts it within a second or so
        wait_for(lambda: c.get("/api/runs/seed-mnist").json()["state"] in ("starting", "running", "finished"), 10)
        wait_for(lambda: c.get("/api/runs/seed-mnist").json()["state"] == "finished")


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory) -> Path:
    """Enough images that an epoch of the seed recipe takes a moment: a run can be stopped in its middle."""
    return write_fake_dataset(tmp_path_factory.mktemp("slow") / "idx", n_train=20000, n_test=200)


def running_with_an_epoch(client, name):
    run = client.get(f"/api/runs/{name}").json()
    return run if run["state"] == "running" and run["epochs"] >= 1 else None


@pytest.mark.slow
def test_stopping_a_run_ends_it_cleanly_and_the_cli_resumes_it(folder, slow_data):
    with TestClient(app_of(folder, slow_data)) as c:
        c.post("/api/runs", json={**QUICK, "epochs": 20})
        wait_for(lambda: running_with_an_epoch(c, "seed-mnist"))
        stopped = c.delete("/api/runs/seed-mnist").json()
        assert stopped["runs"] == ["seed-mnist"]
        assert stopped["message"].endswith(f"continue with: mnistlab train --resume {folder.name}/seed-mnist")
        events = [data for kind, _, data in sse(c.get("/api/runs/seed-mnist/events").text) if kind == "message"]
        assert events[-1]["type"] == "ended" and events[-1]["status"] == "stopped"
        run = wait_for(lambda: (r := c.get("/api/runs/seed-mnist").json())["state"] == "resumable" and r)
        assert 1 <= run["epochs"] < 20
    r = subprocess.run([sys.executable, "-m", "mnistlab", "train", "--resume", str(folder / "seed-mnist"), "--epochs",
                        str(run["epochs"] + 1), "--no-plots"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert runs.info(folder / "seed-mnist").state == "finished"


@pytest.mark.slow
def test_a_job_killed_mid_run_leaves_a_resumable_run_and_the_server_serving(folder, slow_data):
    with TestClient(app_of(folder, slow_data)) as c:
        c.post("/api/runs", json={**QUICK, "epochs": 20})
        wait_for(lambda: running_with_an_epoch(c, "seed-mnist"))
        os.kill(lock_holder(folder / "seed-mnist"), signal.SIGKILL)
        messages = sse(c.get("/api/runs/seed-mnist/events").text)  # the stream ends although no 'ended' came
        assert messages[-1] == ("end", None, {"runs": {"seed-mnist": "resumable"}})
        run = c.get("/api/runs/seed-mnist").json()
        assert run["state"] == "resumable" and run["epochs"] >= 1 and run["model"] == "seed-mnist"
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/models/seed-mnist").status_code == 200
        assert "not running here (it is resumable)" in error_of(c.delete("/api/runs/seed-mnist"), 409)
    r = subprocess.run([sys.executable, "-m", "mnistlab", "train", "--resume", str(folder / "seed-mnist"),
                        "--epochs", str(run["epochs"] + 1), "--no-plots"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_a_job_that_fails_before_its_run_begins_shows_the_commands_one_line(client, folder):
    assert client.post("/api/runs", json={**QUICK, "val_size": 100000}).status_code == 202
    run = wait_for(lambda: (r := client.get("/api/runs/seed-mnist").json())["state"] == "failed" and r)
    assert run["problem"].startswith("mnistlab train: error: ") and "val" in run["problem"]
    assert client.delete("/api/runs/seed-mnist").json()["message"] == "removed: seed-mnist"
    error_of(client.get("/api/runs/seed-mnist"), 404)
