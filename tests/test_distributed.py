"""DistributedDataParallel through torchrun: N processes train the single-process run of the same config
(each rank a slice of every global batch), rank 0 alone writes, a lost rank ends the job in one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mnistlab.core.distributed import Process, Shard, check_split, launched
from mnistlab.base.errors import UsageError
from mnistlab.core.training import Batches


def test_torchruns_variables_say_which_process_this_is(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launched() is None  # plain `mnistlab train`
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert launched() == Process(3, 1, 4) and not launched().leader and str(launched()) == "rank 3 of 4"
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="RANK 3 is not below WORLD_SIZE 2"):
        launched()


def test_the_ranks_slices_put_together_are_the_global_batches():
    x, y = torch.arange(100.0).view(100, 1, 1, 1), torch.arange(100)
    batches = Batches(x, y, batch_size=20, shift=0)
    whole = [yb for _, yb in batches.epoch(torch.Generator().manual_seed(1))]
    parts = [[yb for _, yb in Shard(batches, Process(r, r, 4)).epoch(torch.Generator().manual_seed(1))]
             for r in range(4)]
    assert all(len(p) == len(whole) for p in parts)
    for i, batch in enumerate(whole):
        assert torch.equal(torch.cat([p[i] for p in parts]), batch)
        assert all(len(p[i]) == 5 for p in parts)


@pytest.mark.parametrize("batch, n, drop_last, message", [
    (30, 600, False, "--batch-size 30 does not split over 4 processes"),
    (32, 610, False, "the last batch of each epoch holds 2 images"),
])
def test_a_batch_the_processes_cannot_share_equally_is_refused(batch, n, drop_last, message):
    with pytest.raises(UsageError, match=message):
        check_split(batch, n, drop_last, 4)
    check_split(32, 610, True, 4)  # dropped: every batch splits
    check_split(32, 608, False, 4)


# ---------------------------------------------------------------------------
# Real processes, through torchrun

ARGS = ["--recipe", "default", "--epochs", "2", "--batch-size", "32", "--shift", "1", "--val-size", "100",
        "--device", "cpu", "--no-plots"]


def torchrun(*args, cwd, nproc=2, wait=True):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               "-m", "mnistlab", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_train_the_single_process_run_and_rank_0_alone_writes(tmp_path, tiny_idx_dir):
    from mnistlab.cli import main

    assert main(["train", *ARGS, "--data-dir", str(tiny_idx_dir), "--out", str(tmp_path / "single")]) == 0
    done = torchrun("train", *ARGS, "--data-dir", str(tiny_idx_dir), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    made = list((tmp_path / "runs").iterdir())
    assert [p.name for p in made] == ["default-mnist"]  # one run directory: rank 1 created none
    assert done.stdout.count("test accuracy") == 1  # and rank 0 alone reported
    single, ddp = (json.loads((p / "summary.json").read_text()) for p in (tmp_path / "single", made[0]))
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)
    assert ddp["val_accuracy"] == pytest.approx(single["val_accuracy"], abs=0.011)
    a, b = load_file(str(tmp_path / "single" / "model.safetensors")), load_file(str(made[0] / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-5)


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the worker with RANK=rank among the processes torchrun `parent` started (Linux /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process through /proc")
def test_killing_one_rank_ends_the_job_with_a_line_naming_it_and_the_run_resumes(tmp_path, tiny_idx_dir):
    out = tmp_path / "run"
    job = torchrun("train", "--recipe", "seed", "--epochs", "1000", "--batch-size", "32", "--device", "cpu",
                   "--no-plots", "--data-dir", str(tiny_idx_dir), "--out", str(out), cwd=tmp_path, wait=False)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            summary = out / "summary.json"
            if summary.is_file() and json.loads(summary.read_text())["epochs"] >= 2:
                break
            time.sleep(0.2)
        victim = _rank_pid(job.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        _, err = job.communicate(timeout=120)
    finally:
        job.kill()
    assert job.returncode != 0
    # Rank 0 either notices the lost peer itself, or torchrun's agent stops it first (SIGTERM), which
    # is an interruption: which one wins is a race. Either way it says one true line and how to go on.
    ours = [line for line in err.splitlines() if line.startswith("mnistlab train: ") and "rank 0 of 2" in line]
    assert len(ours) == 1, err[-3000:]
    assert (f"the job lost rank 1 (pid {victim}), which ended" in ours[0]
            or f"local_rank: 1 (pid: {victim})" in err and ": interrupted; epochs 1-" in ours[0]), err[-3000:]
    assert "--resume" in ours[0]
    kept = json.loads((out / "summary.json").read_text())["epochs"]
    assert kept >= 2
    done = torchrun("train", "--resume", str(out), "--epochs", str(kept + 2), "--no-plots", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["epochs"] == kept + 2 and summary["world_size"] == 2


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the ranks learn of the launcher's end from Linux")
def test_killing_the_launcher_stops_its_ranks_and_leaves_a_resumable_run(tmp_path, tiny_idx_dir):
    from mnistlab.core import runs

    out = tmp_path / "run"
    job = torchrun("train", "--recipe", "seed", "--epochs", "1000", "--batch-size", "32", "--device", "cpu",
                   "--no-plots", "--data-dir", str(tiny_idx_dir), "--out", str(out), cwd=tmp_path, wait=False)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not ((out / "summary.json").is_file()
                                               and json.loads((out / "summary.json").read_text())["epochs"] >= 1):
        time.sleep(0.2)
    ranks = [_rank_pid(job.pid, r) for r in (0, 1)]
    assert None not in ranks
    job.send_signal(signal.SIGKILL)  # torchrun itself: it cannot pass a signal on
    job.wait(timeout=60)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in ranks):
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in ranks)  # no orphan trains on
    info = runs.info(out)
    assert info.state == "resumable" and info.epochs >= 1
