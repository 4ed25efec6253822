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


@pytest.mark.slow
def test_train_then_evaluate_end_to_end(tmp_path, tiny_idx_dir):
    out = tmp_path / "run"
    r = run_cli("train", "--data-dir", tiny_idx_dir, "--epochs", "2", "--batch-size", "32", "--out", out,
                "--no-plots", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "recipe default, with epochs 2, batch_size 32, device cpu" in r.stdout  # what differs, in one line
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


@pytest.mark.slow
def test_default_out_is_under_runs_and_never_overwrites(tmp_path, tiny_idx_dir):
    for _ in range(2):
        r = run_cli("train", "--data-dir", tiny_idx_dir, "--epochs", "1", "--no-plots", "--recipe", "seed",
                    cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["seed-mnist", "seed-mnist-2"]


def test_resume_continues_a_run(tmp_path, tiny_idx_dir, capsys):
    from mnistlab.base.config import recipe
    from mnistlab.core.engine import train

    train(recipe("seed", epochs=2, device="cpu"), out=tmp_path / "r", data_dir=tiny_idx_dir, stop_after=1)
    assert main(["train", "--resume", str(tmp_path / "r"), "--no-plots"]) == 0
    assert f"run: {tmp_path / 'r'} (resuming after epoch 1/2)" in capsys.readouterr().out
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("argv, needle", [
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--lr", "abc"], "--lr"),
    (["train", "--lr", "-1"], "lr must be > 0"),
    (["train", "--recipe", "nope"], "invalid choice"),
    (["train", "--optimizer", "lbfgs"], "invalid choice: 'lbfgs'"),
    (["train", "--weight-decay", "-1"], "weight_decay must be in [0, 1)"),
    (["train", "--seed", str(2**70)], "seed must be in [0, 2**63-1]"),
    (["train", "--hidden", "100000000"], "hidden sizes must be"),
    (["train", "--std", "inf"], "std must be a finite number"),
    (["train", "--mean", "nan"], "mean must be a finite number"),
    (["evaluate", "run", "--device", "foo"], "--device foo: unknown device"),
    (["evaluate", "run", "--device", "cuda"] if not __import__("torch").cuda.is_available() else ["nope"],
     "CUDA is not available on this machine" if not __import__("torch").cuda.is_available() else "invalid choice"),
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
    (["train", "--resume", "/nonexistent"], "no such run directory"),
])
def test_user_errors_give_one_line_and_exit_1(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # a run that never started leaves no folder behind


def test_train_help_shows_every_flag_with_the_default_recipes_value_and_the_recipe_list(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for flag in ("--recipe", "--epochs", "--batch-size", "--lr", "--val-size", "--seed", "--device", "--resume",
                 "--data-dir", "--out", "--hidden"):
        assert flag in text
    for shown in ("passes over the training data (default: 10)", "images per training step (default: 128)",
                  "(the peak rate with onecycle) (default: 0.1)", "SGD momentum (0: plain SGD, as in the notebook) "
                  "(default: 0.9)", "L2 weight decay (default: 0.0005)", "(default: 0)",
                  "seed: the course notebook verbatim", "fast: least time to 98%"):
        assert shown in text


def test_every_positional_argument_has_help(capsys):
    for command in ("evaluate", "plot", "predict", "runs"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        positional = capsys.readouterr().out.split("positional arguments:")[1].split("options:")[0]
        assert all(len(line.split(maxsplit=1)) == 2 for line in positional.strip().splitlines()
                   if not line.startswith("    " * 3)), positional


def test_recipes_shows_every_recipe_side_by_side_with_measured_accuracy(capsys):
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["seed", "default", "fast", "cnn"]
    assert lines[[line.split()[0] for line in lines if line].index("--lr")].split() == ["--lr", "0.003", "0.1",
                                                                                          "0.1", "0.05"]
    assert any(line.startswith("test accuracy") and "89.51%" in line for line in lines)
    assert main(["recipes", "--json"]) == 0
    recipes = json.loads(capsys.readouterr().out)
    assert recipes["fast"]["config"]["batch_size"] == 256 and recipes["cnn"]["measured"]["test_accuracy"] > 0.99


def test_the_recipes_page_table_and_the_recipes_measurements_agree():
    from pathlib import Path

    from mnistlab.base.config import MEASURED

    page = (Path(__file__).parents[1] / "docs" / "recipes.md").read_text()
    row = next(line for line in page.splitlines() if line.startswith("| test accuracy"))
    cells = [c.strip() for c in row.strip("|").split("|")][2:]  # after the label and the notebook column
    assert cells == [f"{100 * MEASURED[name]['test_accuracy']:.2f}%" for name in ("seed", "default", "fast", "cnn")]


def test_train_json_prints_the_summary_as_one_document_and_progress_on_stderr(tmp_path, tiny_idx_dir, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "--data-dir", str(tiny_idx_dir), "--epochs", "1",
                 "--device", "cpu", "--no-plots", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["run_dir"] == str(tmp_path / "r") and summary["epochs"] == 1 and summary["finished"]
    assert "epoch 1/1" in captured.err


def test_evaluate_with_device_auto_runs_on_what_this_machine_has(tiny_run, tiny_idx_dir, capsys):
    assert main(["evaluate", str(tiny_run), "--data-dir", str(tiny_idx_dir), "--device", "auto", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 200


def test_in_a_log_progress_is_a_plain_line_every_tenth_of_an_epoch_at_most():
    from mnistlab.commands.progress import Printer

    printed = []
    printer = Printer(printed.append, bar=False, every=0)
    for step in range(1, 100):  # progress events of one epoch of 100 steps, one per step
        printer({"type": "progress", "time": 1000.0 + step, "run": "r", "epoch": 1, "epochs": 3, "step": step,
                 "steps": 100, "loss": 2.0 / step, "steps_per_second": 1.0})
    assert len(printed) == 9 and printed[0] == "epoch 1/3   10% (10/100 batches)  loss 0.2000  10s"
    assert printed[-1].startswith("epoch 1/3   90% (90/100")
    printer({"type": "epoch", "time": 1100.0, "run": "r", "epochs": 3, "row": {
        "epoch": 1, "train_loss": 0.5, "val_accuracy": None, "test_accuracy": 0.9, "lr": 0.1, "seconds": 100.0}})
    assert printed[-1] == "epoch 1/3  train loss 0.5000  test acc 90.00%  100.00s"


@pytest.mark.slow
def test_written_to_a_pipe_a_long_epoch_shows_plain_progress_lines(tmp_path, real_mnist):
    env = {**__import__("os").environ, "MNISTLAB_PROGRESS_SECONDS": "0"}
    r = subprocess.run([sys.executable, "-m", "mnistlab", "train", "--out", str(tmp_path / "r"), "--data-dir",
                        str(real_mnist), "--recipe", "seed", "--epochs", "1", "--batch-size", "8", "--train-size",
                        "30000", "--no-plots", "--device", "cpu"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    progress = [line for line in r.stdout.splitlines() if "% (" in line and "batches)" in line]
    # 3,750 steps take seconds: progress events every half second, a line each tenth of the epoch at most
    assert 1 <= len(progress) <= 9 and progress[0].startswith("epoch 1/1") and "loss" in progress[0]
    assert "\r" not in r.stdout + r.stderr


def test_ci_runs_exactly_the_readmes_set_up_and_test_commands():
    from pathlib import Path

    root = Path(__file__).parents[1]
    readme, ci = (root / "README.md").read_text(), (root / ".ci" / "run").read_text()
    tests = readme.split("## Run the tests")[1].split("```bash")[1].split("```")[0]
    commands = [line.split("#")[0].strip() for line in tests.strip().splitlines()]
    assert commands == ["python -m pytest -q", "python -m pytest -q -m slow"]
    ci_lines = [line.strip() for line in ci.splitlines()]
    assert all(command in ci_lines for command in commands)
    setup = readme.split("## Set up")[1].split("\n## ")[0]
    blocks = [block.split("```")[0] for block in setup.split("```bash")[1:]]
    assert "pip install torch --index-url https://download.pytorch.org/whl/cpu" in blocks[0]  # the CPU build first
    assert 'pip install -e ".[test]" && python -m pytest -q' in blocks[1]
    assert 'python -m pip install --quiet -e ".[test]"' in ci_lines


def test_evaluate_json_prints_the_confusion_matrix_one_row_per_line(tiny_run, tiny_idx_dir, capsys):
    assert main(["evaluate", str(tiny_run), "--data-dir", str(tiny_idx_dir), "--json"]) == 0
    text = capsys.readouterr().out
    report = json.loads(text)
    lines = [line.strip().rstrip(",") for line in text.splitlines()]
    assert all(json.dumps(row) in lines for row in report["confusion"])
    assert len(text.splitlines()) < 40  # not one number per line (10 x 10 of them)


def test_sweep_help_writes_hidden_sizes_as_a_sweep_takes_them(capsys):
    with pytest.raises(SystemExit):
        main(["sweep", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--hidden 128x64" in text and "--hidden 128 64" not in text


def test_help_prints_for_mnistlab_and_every_command(capsys):
    """`mnistlab --help` lists every command with its line (a bare % in one once made it a traceback)."""
    from mnistlab.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for argv in (["--help"], *([name, "--help"] for name in commands)):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        out = capsys.readouterr().out
        assert exc.value.code == 0 and out.startswith("usage: mnistlab"), argv
    with pytest.raises(SystemExit):
        main(["--help"])
    listed = capsys.readouterr().out
    assert all(f"    {name} " in listed for name in commands)
    assert "90% to 98-99%" in listed


def test_every_command_has_a_description_in_its_help(capsys):
    from mnistlab.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    for name, parser in commands.items():
        assert parser.description and len(parser.description) > 40, f"mnistlab {name} --help has no description"


@pytest.mark.parametrize("threads, shown", [(1, "cpu (1 thread)"), (2, "cpu (2 threads)")])
def test_the_device_line_counts_threads_in_english(threads, shown, monkeypatch):
    import torch

    from mnistlab.base.devices import describe

    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    assert describe(torch.device("cpu")) == shown
