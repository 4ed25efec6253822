"""The command line end to end: train, evaluate, resume, and clear errors for bad input."""

import json
import subprocess
import sys

import pytest

from mnistlab.cli import main


def run_cli(*args, cwd=None):
    """Run `python -m mnistlab` in a real process, as a user would."""
    return subprocess.run([sys.executable, "-m", "mnistlab", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


def test_train_then_evaluate_end_to_end(tmp_path, tiny_idx_dir):
    out = tmp_path / "run"
    r = run_cli("train", "--data-dir", tiny_idx_dir, "--epochs", "2", "--batch-size", "32", "--out", out,
                "--no-plots", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert '"recipe": "default"' in r.stdout  # the resolved config is printed at start
    assert "device: cpu" in r.stdout
    epoch_lines = [line for line in r.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and "train loss" in epoch_lines[0] and "test acc" in epoch_lines[0]
    assert "\r" not in r.stdout + r.stderr  # not a terminal: plain lines, no progress bar

    r = run_cli("evaluate", out, "--data-dir", tiny_idx_dir)
    assert r.returncode == 0, r.stderr
    assert "accuracy:" in r.stdout and "confusion matrix" in r.stdout

    r = run_cli("evaluate", out / "model.safetensors", "--data-dir", tiny_idx_dir, "--json")
    report = json.loads(r.stdout)
    summary = json.loads((out / "summary.json").read_text())
    assert report["accuracy"] == pytest.approx(summary["test_accuracy"])
    assert report["total"] == 200 and sum(map(sum, report["confusion"])) == 200
    assert set(report["per_class_accuracy"]) == {str(d) for d in range(10)}


def test_default_out_is_under_runs_and_never_overwrites(tmp_path, tiny_idx_dir):
    for _ in range(2):
        r = run_cli("train", "--data-dir", tiny_idx_dir, "--epochs", "1", "--no-plots", "--recipe", "seed",
                    cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["seed-mnist", "seed-mnist-2"]


def test_resume_continues_a_run(tmp_path, tiny_idx_dir, capsys):
    from mnistlab.config import recipe
    from mnistlab.training import train

    train(recipe("seed", epochs=2, device="cpu"), out=tmp_path / "r", data_dir=tiny_idx_dir, stop_after=1)
    assert main(["train", "--resume", str(tmp_path / "r"), "--no-plots"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("argv, needle", [
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--lr", "abc"], "--lr"),
    (["train", "--lr", "-1"], "lr must be > 0"),
    (["train", "--recipe", "nope"], "invalid choice"),
    (["train", "--optimizer", "lbfgs"], "optimizer must be one of"),
    (["train", "--resume", "x", "--lr", "0.1"], "--resume takes the config from the run"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
])
def test_bad_flags_give_one_line_and_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        code = main(argv)
        raise SystemExit(code)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv, needle", [
    (["evaluate", "/nonexistent/run"], "no such run directory"),
    (["train", "--data-dir", "/nonexistent", "--no-plots"], "--data-dir /nonexistent"),
    (["train", "--resume", "/nonexistent"], "not a run directory"),
])
def test_user_errors_give_one_line_and_exit_1(argv, needle, capsys):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_help_lists_commands_and_training_options():
    r = run_cli("train", "--help")
    assert r.returncode == 0
    for flag in ("--recipe", "--epochs", "--batch-size", "--lr", "--val-size", "--seed", "--device", "--resume",
                 "--data-dir", "--out", "--hidden"):
        assert flag in r.stdout
