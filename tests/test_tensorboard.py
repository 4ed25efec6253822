"""TensorBoard: `train --tensorboard` writes the run's curves (running loss, epoch rows, rate) and its
misclassified test digits where `tensorboard --logdir runs/` finds them; sweeps and resumed runs too; the
package is optional and its absence is one line."""

import builtins

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnistlab.base.config import recipe
from mnistlab.base.errors import UsageError
from mnistlab.cli import main
from mnistlab.core import engine, events


def quick(**overrides):
    return recipe("seed", **{**dict(epochs=2, batch_size=32, device="cpu", shift=0, lr=0.05), **overrides})


def board(run_dir):
    accumulator = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_a_run_writes_its_epoch_rows_and_mistakes_for_tensorboard(tmp_path, tiny_idx_dir):
    result = engine.train(quick(), out=tmp_path / "r", data_dir=tiny_idx_dir, tensorboard=True)
    tb = board(tmp_path / "r")
    tags = tb.Tags()
    assert {"train/loss", "test/accuracy", "train/lr", "train/seconds"} <= set(tags["scalars"])
    losses = [(s.step, s.value) for s in tb.Scalars("train/loss")]
    steps = events.read(tmp_path / "r" / "events.jsonl")[0]["steps_per_epoch"]
    assert losses == [(steps * (k + 1), pytest.approx(r["train_loss"])) for k, r in enumerate(result.rows)]
    assert [s.value for s in tb.Scalars("test/accuracy")] == pytest.approx([r["test_accuracy"] for r in result.rows])
    wrong = 200 - round(200 * result.rows[-1]["test_accuracy"])
    assert len(tags["images"]) == min(wrong, 16) and all(t.startswith("misclassified/") for t in tags["images"])


def test_progress_events_become_the_running_loss(tmp_path, tiny_idx_dir, monkeypatch):
    clock = iter(range(10**6))  # a progress event after every step
    monkeypatch.setattr(engine.time, "perf_counter", lambda: float(next(clock)))
    engine.train(quick(epochs=1), out=tmp_path / "r", data_dir=tiny_idx_dir, tensorboard=True)
    running = board(tmp_path / "r").Scalars("train/running_loss")
    assert [s.step for s in running] == list(range(1, 19))


def test_a_resumed_run_goes_on_writing_without_being_asked_again(tmp_path, tiny_idx_dir):
    engine.train(quick(epochs=3), out=tmp_path / "r", data_dir=tiny_idx_dir, tensorboard=True, stop_after=1)
    engine.resume(tmp_path / "r", data_dir=tiny_idx_dir)
    assert len(board(tmp_path / "r").Scalars("train/loss")) == 3


def test_a_sweep_writes_one_board_per_run(tmp_path, tiny_idx_dir):
    assert main(["sweep", "--recipe", "seed", "--lr", "0.03,0.05", "--epochs", "1", "--train-size", "100",
                 "--val-size", "20", "--device", "cpu", "--data-dir", str(tiny_idx_dir), "--out", str(tmp_path / "s"),
                 "--no-plots", "--tensorboard"]) == 0
    for name in ("lr0.03", "lr0.05"):
        assert len(board(tmp_path / "s" / "runs" / name).Scalars("val/accuracy")) == 1


def test_without_the_package_the_flag_is_one_line_before_anything_is_written(tmp_path, tiny_idx_dir, monkeypatch,
                                                                              capsys):
    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(UsageError, match=r'--tensorboard needs the tensorboard package: pip install "mnistlab\[tensorboard\]"'):
        engine.train(quick(), out=tmp_path / "r", data_dir=tiny_idx_dir, tensorboard=True)
    assert main(["train", "--data-dir", str(tiny_idx_dir), "--out", str(tmp_path / "r"), "--tensorboard"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "r").exists()
