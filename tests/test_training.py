"""Training: determinism, resume equivalence, the building blocks of the loop."""

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from mnistlab.base.config import recipe
from mnistlab.base.devices import flush_denormals
from mnistlab.base.errors import RunError
from mnistlab.base.models import MLP
from mnistlab.core.runs import read_metrics
from mnistlab.core.engine import resume, train
from mnistlab.core.training import Batches, make_optimizer


def quick(**overrides):
    # No shifts: the tiny dataset's class *is* the position of a block.
    base = dict(epochs=3, batch_size=32, device="cpu", shift=0)
    return recipe(overrides.pop("recipe", "default"), **{**base, **overrides})


def weights(run_dir):
    return load_file(str(run_dir / "model.safetensors"))


def test_run_directory_holds_config_metrics_checkpoint_and_summary(tmp_path, tiny_idx_dir):
    result = train(quick(), out=tmp_path / "run", data_dir=tiny_idx_dir)
    run = result.run_dir
    summary = json.loads((run / "summary.json").read_text())
    for key in ("epochs", "train_loss", "test_accuracy", "train_seconds", "device", "world_size", "config"):
        assert key in summary
    assert summary["epochs"] == 3 and len(summary["train_loss"]) == 3 and summary["finished"]
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and summary["device"] == "cpu" and summary["world_size"] == 1
    assert summary["config"] == "config.json"  # the config is stored once, and referred to
    assert json.loads((run / "config.json").read_text()) == quick().to_dict()
    meta = json.loads((run / "model.json").read_text())
    assert meta["architecture"]["hidden"] == [128, 64]
    assert meta["classes"] == [str(d) for d in range(10)] and meta["normalization"] == {"mean": 0.5, "std": 0.5}
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    # Everything a loader needs is tensors or JSON: weights_only loading of the resume state works.
    torch.load(run / "state.pt", weights_only=True)
    assert not list(run.glob("*.tmp"))


def test_learns_the_tiny_dataset(tmp_path, tiny_idx_dir):
    summary = train(quick(), out=tmp_path / "run", data_dir=tiny_idx_dir).summary
    assert summary["train_loss"][-1] < summary["train_loss"][0]
    assert summary["test_accuracy"] > 0.95


def test_same_seed_same_losses_and_weights(tmp_path, tiny_idx_dir):
    a = train(quick(seed=3), out=tmp_path / "a", data_dir=tiny_idx_dir)
    b = train(quick(seed=3), out=tmp_path / "b", data_dir=tiny_idx_dir)
    c = train(quick(seed=4), out=tmp_path / "c", data_dir=tiny_idx_dir)
    assert a.summary["train_loss"] == b.summary["train_loss"]
    assert all(torch.equal(weights(a.run_dir)[k], weights(b.run_dir)[k]) for k in weights(a.run_dir))
    assert a.summary["train_loss"] != c.summary["train_loss"]


@pytest.mark.parametrize("name", ["seed", "default"])
def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(tmp_path, tiny_idx_dir, name):
    config = quick(recipe=name, seed=1, val_size=100)
    whole = train(config, out=tmp_path / "whole", data_dir=tiny_idx_dir)
    train(config, out=tmp_path / "split", data_dir=tiny_idx_dir, stop_after=1)
    assert json.loads((tmp_path / "split" / "summary.json").read_text())["epochs"] == 1
    resumed = resume(tmp_path / "split", data_dir=tiny_idx_dir)
    assert resumed.summary["train_loss"] == whole.summary["train_loss"]
    w1, w2 = weights(whole.run_dir), weights(resumed.run_dir)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    lines = (tmp_path / "split" / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,") and sum(line.startswith("epoch,") for line in lines) == 1
    assert [r["epoch"] for r in read_metrics(tmp_path / "split")] == [1, 2, 3]


def test_resume_remembers_the_data_dir(tmp_path, tiny_idx_dir):
    train(quick(epochs=2), out=tmp_path / "r", data_dir=tiny_idx_dir, stop_after=1)
    assert resume(tmp_path / "r").summary["epochs"] == 2


def test_resume_finds_the_data_in_the_usual_places_when_the_recorded_folder_is_gone(tmp_path, tiny_idx_dir,
                                                                                    monkeypatch):
    import shutil

    moved = shutil.copytree(tiny_idx_dir, tmp_path / "idx")
    train(quick(epochs=2), out=tmp_path / "r", data_dir=moved, stop_after=1)
    shutil.rmtree(moved)
    monkeypatch.setenv("MNISTLAB_DATA", str(tmp_path / "cache"))
    shutil.copytree(tiny_idx_dir, tmp_path / "cache" / "mnist")  # where `train` looks without --data-dir
    lines = []
    assert resume(tmp_path / "r", log=lines.append).summary["epochs"] == 2
    assert any("is gone; looking in the usual places" in line for line in lines)
    assert any(f"data: mnist ({tmp_path / 'cache' / 'mnist'})" in line for line in lines)


def test_an_existing_run_is_never_overwritten(tmp_path, tiny_idx_dir):
    train(quick(epochs=1), out=tmp_path / "r", data_dir=tiny_idx_dir)
    with pytest.raises(RunError, match="already holds a run"):
        train(quick(epochs=1), out=tmp_path / "r", data_dir=tiny_idx_dir)


def test_validation_split_is_held_out_of_training(tmp_path, tiny_idx_dir):
    summary = train(quick(epochs=1, val_size=100), out=tmp_path / "r", data_dir=tiny_idx_dir).summary
    assert summary["val_accuracy"] is not None
    with pytest.raises(RunError, match="val-size"):
        train(quick(val_size=10_000), out=tmp_path / "r2", data_dir=tiny_idx_dir)


def test_diverging_loss_stops_with_a_clear_error(tmp_path, tiny_idx_dir):
    with pytest.raises(RunError, match="diverged, so lower --lr"):
        train(quick(recipe="seed", lr=1e6, epochs=2), out=tmp_path / "r", data_dir=tiny_idx_dir)


def test_batches_cover_the_split_once_per_epoch_in_random_order():
    x, y = torch.arange(10.0).view(10, 1, 1, 1).expand(10, 1, 28, 28).contiguous(), torch.arange(10)
    batches = Batches(x, y, batch_size=4)
    seen = list(batches.epoch(torch.Generator().manual_seed(0)))
    assert [len(yb) for _, yb in seen] == [4, 4, 2] and len(batches) == 3
    labels = torch.cat([yb for _, yb in seen])
    assert sorted(labels.tolist()) == list(range(10)) and labels.tolist() != list(range(10))
    assert all(torch.equal(xb[:, 0, 0, 0], yb.float()) for xb, yb in seen)  # images stay with labels
    assert len(Batches(x, y, batch_size=4, drop_last=True)) == 2


def test_shift_moves_each_image_by_at_most_the_given_pixels():
    x = torch.full((200, 1, 28, 28), -1.0)
    x[:, :, 10:14, 10:14] = 1.0
    batches = Batches(x, torch.zeros(200, dtype=torch.long), batch_size=50, shift=2)
    shifted = torch.cat([xb for xb, _ in batches.epoch(torch.Generator().manual_seed(0))])
    assert shifted.shape == x.shape
    assert torch.all((shifted == 1.0).sum(dim=(1, 2, 3)) == 16)  # the block is moved, not cut
    assert torch.all((shifted == -1.0).sum(dim=(1, 2, 3)) == 28 * 28 - 16)  # filled with background
    rows = (shifted[:, 0] == 1.0).any(dim=2).float().argmax(dim=1)
    cols = (shifted[:, 0] == 1.0).any(dim=1).float().argmax(dim=1)
    assert set(rows.tolist()) == set(cols.tolist()) == {8, 9, 10, 11, 12}


def test_denormals_are_zero_inside_the_cpu_context_only():
    tiny = torch.tensor([1e-39])  # below float32's smallest normal, 1.18e-38
    supported = torch.set_flush_denormal(True)  # x86 with SSE3; elsewhere a no-op returning False
    torch.set_flush_denormal(False)
    with flush_denormals(torch.device("cpu")):
        assert (tiny * 1.0).item() == (0.0 if supported else pytest.approx(1e-39))
    assert (tiny * 1.0).item() == pytest.approx(1e-39)
    with flush_denormals(torch.device("meta")):  # not a CPU: nothing changes
        assert (tiny * 1.0).item() == pytest.approx(1e-39)


def plain_optimizer(config, model):
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov, weight_decay=config.weight_decay)


@pytest.mark.parametrize("config, fused", [(recipe("seed"), None), (recipe("fast"), True),
                                           (recipe("default", optimizer="adamw", lr=1e-3), True)])
def test_fused_optimizer_takes_the_same_steps_as_the_plain_one(config, fused):
    """Fused where momentum or weight decay make the update several ops per parameter."""
    models = []
    for use_fused in (False, True):
        torch.manual_seed(0)
        model = MLP((1, 28, 28), config.hidden, 10)
        optimizer = (make_optimizer(model.parameters(), config.optimizer, config.lr, config.momentum, config.nesterov,
                                    config.weight_decay) if use_fused else plain_optimizer(config, model))
        assert not use_fused or optimizer.defaults["fused"] == fused
        generator = torch.Generator().manual_seed(1)
        for _ in range(5):
            optimizer.zero_grad()
            model(torch.randn(8, 1, 28, 28, generator=generator)).square().mean().backward()
            optimizer.step()
        models.append(model)
    for plain, made in zip(*(m.parameters() for m in models), strict=True):
        torch.testing.assert_close(plain, made, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_seed_recipe_reproduces_the_notebook_on_real_mnist(tmp_path, real_mnist):
    """The notebook printed about 1.94, 0.91, 0.55, 0.44, 0.39 and reached about 90%."""
    summary = train(recipe("seed", device="cpu"), out=tmp_path / "seed", data_dir=real_mnist).summary
    for ours, notebook in zip(summary["train_loss"], [1.94, 0.91, 0.55, 0.44, 0.39]):
        assert abs(ours - notebook) < 0.05
    assert 0.88 <= summary["test_accuracy"] <= 0.92
