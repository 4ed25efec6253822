"""The CPU thread count is chosen, not inherited: from the CPUs the process may use (affinity mask,
SLURM_CPUS_PER_TASK, a CPU quota), OMP_NUM_THREADS, --threads, the size of the step and the machine's load.
Environments and the affinity mask are patched; nothing here is timed."""

import os

import pytest
import torch

from mnistlab.base import threads
from mnistlab.base.devices import describe
from mnistlab.base.threads import SMALL_STEP_FLOPS, choose_threads, cpu_budget, plural_threads, use_threads
from mnistlab.cli import main

SMALL, LARGE = SMALL_STEP_FLOPS / 10, SMALL_STEP_FLOPS * 10  # the seed recipe's step; a batched group's


@pytest.fixture
def machine(monkeypatch):
    """A machine of 8 cores with no load and no quota, whose affinity mask the test sets."""
    def set_up(affinity=8, load=0.0):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
        monkeypatch.setattr(threads, "_cgroup_quota", lambda: None)
        for name in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
            monkeypatch.delenv(name, raising=False)
    set_up()
    return set_up


@pytest.fixture(autouse=True)
def keep_torch_threads(monkeypatch):
    """torch's count and the last choice's note as they were before the test."""
    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_current", None)
    yield
    torch.set_num_threads(before)


def test_a_large_step_uses_every_cpu_of_the_affinity_mask(machine):
    machine(affinity=3)
    assert cpu_budget() == (3, "affinity mask")
    choice = choose_threads(None, LARGE)
    assert (choice.threads, choice.cpus, choice.note) == (3, 3, None)
    assert "affinity mask" in choice.reason


def test_a_small_step_uses_one_thread(machine):
    choice = choose_threads(None, SMALL)
    assert choice.threads == 1 and choice.note is None and "small steps" in choice.reason
    assert choose_threads(None, None).threads == 1  # work of unknown size is taken as small


def test_slurm_cpus_per_task_caps_the_cpus(machine, monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    assert cpu_budget() == (2, "SLURM_CPUS_PER_TASK=2")
    assert choose_threads(None, LARGE).threads == 2
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "not a number")  # ignored, as Slurm never writes that
    assert cpu_budget() == (8, "affinity mask")


def test_a_container_quota_caps_the_cpus(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")  # docker --cpus 1.5
    assert threads._cgroup_quota(cpu_max) == 2
    cpu_max.write_text("max 100000\n")
    assert threads._cgroup_quota(cpu_max) is None
    assert threads._cgroup_quota(tmp_path / "absent") is None
    assert cpu_budget(environ={}, affinity=8, quota=2) == (2, "CPU quota")


def test_omp_num_threads_is_the_users_choice(machine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    choice = choose_threads(None, SMALL)
    assert choice.threads == 3 and choice.reason == "OMP_NUM_THREADS=3" and choice.note is None
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")  # nested levels: the first is torch's
    assert choose_threads(None, SMALL).threads == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "0")
    assert choose_threads(None, SMALL).threads == 1


def test_threads_flag_overrides_everything(machine, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    choice = choose_threads(2, LARGE)
    assert choice.threads == 2 and choice.reason == "--threads 2" and choice.note is None


def test_more_threads_than_cpus_are_given_with_a_note(machine):
    machine(affinity=2)
    choice = choose_threads(8, SMALL)
    assert choice.threads == 8
    assert "on 2 CPUs (affinity mask)" in choice.note and "--threads 2 may be faster" in choice.note


def test_on_a_busy_machine_the_default_takes_only_the_free_cores_and_says_so(machine):
    machine(affinity=4, load=2.2)  # about two cores busy
    choice = choose_threads(None, LARGE)
    assert choice.threads == 2 and choice.note == (
        "not 4, as the machine is busy: load 2.2 on 4 CPUs; --threads N to choose")
    machine(affinity=2, load=6.0)  # busier than it has cores: one thread, and a word about it
    choice = choose_threads(None, LARGE)
    assert choice.threads == 1 and "not 2" in choice.note
    choice = choose_threads(None, SMALL)
    assert choice.threads == 1 and choice.note == (
        "the machine is busy: load 6.0 on 2 CPUs; steps will be slower than on a quiet machine")
    machine(affinity=2, load=0.3)  # a little background work is not busy
    assert choose_threads(None, LARGE) == choose_threads(None, LARGE, load=0.0)


def test_on_a_busy_machine_an_asked_count_is_kept_with_advice(machine):
    machine(affinity=2, load=1.7)
    choice = choose_threads(2, SMALL)
    assert choice.threads == 2
    assert choice.note.startswith("--threads 2, but the machine is busy: load 1.7 on 2 CPUs")
    assert choice.note.endswith("--threads 1 may be faster")
    assert choose_threads(None, SMALL, load=None).note is None  # no load average on this platform


def test_use_threads_sets_torch_and_the_device_line_says_why(machine):
    machine(affinity=2, load=3.0)
    use_threads(None, SMALL)
    assert torch.get_num_threads() == 1
    assert describe(torch.device("cpu")) == ("cpu (1 thread; the machine is busy: load 3.0 on 2 CPUs; steps will be "
                                             "slower than on a quiet machine)")
    torch.set_num_threads(2)  # changed since: the note no longer applies
    assert describe(torch.device("cpu")) == "cpu (2 threads)"
    machine(affinity=2, load=0.0)
    use_threads(None, LARGE)
    assert describe(torch.device("cpu")) == "cpu (2 threads)"


def test_plural_threads():
    assert plural_threads(1) == "1 thread" and plural_threads(2) == "2 threads"


def test_cli_threads_flag_sets_the_count_while_the_command_runs(machine, monkeypatch, capsys):
    import mnistlab.cli
    import mnistlab.core.evaluation
    from mnistlab.base.errors import RunError

    seen = []

    def evaluate(*args, **kwargs):
        seen.append((torch.get_num_threads(), describe(torch.device("cpu"))))
        raise RunError("stopped here")

    monkeypatch.setattr(mnistlab.core.evaluation, "evaluate", evaluate)
    monkeypatch.setattr(mnistlab.cli, "evaluate", evaluate, raising=False)  # where the CLI imports it at its top
    torch.set_num_threads(1)
    assert main(["evaluate", "run", "--device", "cpu", "--threads", "3"]) == 1
    machine(affinity=2, load=6.0)
    assert main(["evaluate", "run", "--device", "cpu"]) == 1  # evaluation: large batches, but a busy machine
    assert seen == [(3, "cpu (3 threads)"),
                    (1, "cpu (1 thread; not 2, as the machine is busy: load 6.0 on 2 CPUs; --threads N to choose)")]
    assert torch.get_num_threads() == 1 and describe(torch.device("cpu")) == "cpu (1 thread)"  # as before
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mnistlab evaluate: error: stopped here"] * 2  # nothing about threads besides the device line


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5", "2000"])
def test_cli_threads_flag_refuses_what_is_not_a_count(value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["inspect", "--threads", value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--threads must be a whole number from 1 to 1024" in err and len(err.splitlines()) == 1


def test_cli_bench_threads_takes_a_list(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--threads", "1,x"])
    assert exc.value.code == 2
    assert "comma list such as 1,2" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_threads_compares_thread_counts_side_by_side(tiny_idx_dir):
    from mnistlab.commands.bench import format_bench, run_bench

    result = run_bench("seed", device="cpu", epochs=1, repeats=1, data_dir=tiny_idx_dir, threads=(1, 2))
    assert [s["threads"] for s in result["ours_by_threads"]] == [1, 2]
    assert result["ours"] is result["ours_by_threads"][0]
    for side in result["ours_by_threads"]:
        assert len(side["runs"]) == 1 and side["runs"][0]["threads"] == side["threads"]
    text = format_bench(result)
    assert "ours (seed, 1 epoch, 1 thread)" in text and "ours (seed, 1 epoch, 2 threads)" in text
    assert "threads: 1 thread " in text and "the fastest's seconds per epoch" in text
    assert torch.get_num_threads() == 1  # as the test process had it


@pytest.mark.slow
def test_bench_sweep_gives_each_side_its_own_default_threads(tiny_idx_dir, machine):
    from mnistlab.commands.bench import format_sweep_bench, run_sweep_bench

    machine(affinity=2)
    result = run_sweep_bench("seed", device="cpu", members=(2, 64), sequential=1, data_dir=tiny_idx_dir)
    assert result["single_threads"] == 1  # one network's step is small
    assert [row["threads"] for row in result["rows"]] == [1, 2]  # 64 networks' is not
    assert "one after another: 1 network timed per repeat, 1 thread" in format_sweep_bench(result)
