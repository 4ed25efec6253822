"""The benchmark compares like with like: the notebook's data path gives our tensors, its loop
our losses, and the result and the command hold what they document. Never a time threshold."""

import json
import sys
import types

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mnistlab.base import data
from mnistlab.commands.bench import (
    PILMNIST,
    format_bench,
    normalize,
    notebook_dataset,
    notebook_epoch,
    notebook_model,
    notebook_transform,
    run_bench,
    unsteady,
)
from mnistlab.cli import main
from mnistlab.base.config import recipe
from mnistlab.core.engine import train
from mnistlab.core.runs import time_to_target

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tiny_idx_dir):
    return data.load("mnist", tiny_idx_dir)


def test_pil_path_gives_exactly_the_tensors_of_to_device(tiny):
    dataset = PILMNIST(tiny.train, notebook_transform(0.5, 0.5))
    x, y = data.to_device(tiny.train, CPU, 0.5, 0.5)
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    assert torch.equal(torch.stack(images), x)
    assert list(labels) == y.tolist()


def test_pil_path_checks_what_torchvision_checks():
    with pytest.raises(ValueError, match="std"):
        normalize(torch.zeros(1, 2, 2), (0.5,), (0.0,))


def test_torchvision_reads_the_splits_from_its_own_raw_layout(tmp_path, tiny, monkeypatch):
    """With torchvision importable, its dataset class gets a root holding <Name>/raw/ with the
    four uncompressed IDX files of the loaded splits (torchvision itself is stubbed here)."""
    seen = {}

    class MNIST:
        def __init__(self, root, train, transform, download):
            seen.update(root=root, train=train, transform=transform, download=download)

    transforms = types.SimpleNamespace(Compose=lambda steps: ("compose", steps), ToTensor=lambda: "to_tensor",
                                       Normalize=lambda mean, std: ("normalize", mean, std))
    torchvision = types.SimpleNamespace(__version__="0.0-stub", datasets=types.SimpleNamespace(MNIST=MNIST),
                                        transforms=transforms)
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.transforms", transforms)

    train_set, pipeline, _ = notebook_dataset(tiny, tmp_path, 0.5, 0.5)
    assert pipeline == "torchvision" and isinstance(train_set, MNIST)
    assert seen == {"root": str(tmp_path), "train": True, "download": False,
                    "transform": ("compose", ["to_tensor", ("normalize", (0.5,), (0.5,))])}
    raw = tmp_path / "MNIST" / "raw"
    for split_name, split in (("train", tiny.train), ("t10k", tiny.test)):
        assert np.array_equal(data.read_idx(raw / f"{split_name}-images-idx3-ubyte"), split.images.numpy())
        labels = data.read_idx(raw / f"{split_name}-labels-idx1-ubyte")
        assert labels.dtype == np.uint8 and np.array_equal(labels, split.labels.numpy())


@pytest.mark.slow
def test_notebook_loop_and_ours_agree_given_the_same_init_and_batch_order(tmp_path, tiny, tiny_idx_dir):
    config = recipe("seed", epochs=1, device="cpu")
    ours = train(config, out=tmp_path / "ours", data_dir=tiny_idx_dir)

    # Ours shuffles with a generator seeded by the seed; feed that order to the notebook's DataLoader.
    order = torch.randperm(len(tiny.train), generator=torch.Generator().manual_seed(config.seed))
    loader = DataLoader(PILMNIST(tiny.train, notebook_transform(config.mean, config.std)),
                        batch_size=config.batch_size, sampler=order.tolist())
    torch.manual_seed(config.seed)
    model = notebook_model(28 * 28, config.hidden, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr)
    loss = notebook_epoch(model, optimizer, torch.nn.NLLLoss(), loader, CPU)

    assert loss == pytest.approx(ours.summary["train_loss"][0], abs=1e-5)
    for theirs, mine in zip(model.parameters(), ours.model.parameters(), strict=True):
        torch.testing.assert_close(theirs, mine, atol=1e-6, rtol=1e-5)


def test_time_to_target_counts_training_seconds_up_to_the_first_epoch_at_target():
    rows = [{"seconds": 1.0, "val_accuracy": None, "test_accuracy": 0.95},
            {"seconds": 2.0, "val_accuracy": None, "test_accuracy": 0.981},
            {"seconds": 4.0, "val_accuracy": None, "test_accuracy": 0.99}]
    assert time_to_target(rows, 0.98) == 3.0
    assert time_to_target(rows, 0.995) is None
    assert time_to_target([{"seconds": 1.0, "val_accuracy": None, "test_accuracy": None}], 0.0) is None
    # With a validation split, that is the measure: the test split is not looked at to stop.
    held_out = [{"seconds": 1.0, "val_accuracy": 0.97, "test_accuracy": 0.99},
                {"seconds": 1.0, "val_accuracy": 0.985, "test_accuracy": 0.98}]
    assert time_to_target(held_out, 0.98) == 2.0


@pytest.mark.slow
def test_run_bench_returns_the_documented_result(tiny_idx_dir):
    result = run_bench("seed", device="cpu", epochs=1, repeats=1, data_dir=tiny_idx_dir)
    assert {"recipe", "dataset", "epochs", "repeats", "comparable", "machine", "notebook", "ours",
            "speedup", "target_accuracy"} <= set(result)
    assert {"device", "torch", "threads", "cpu", "gpu"} <= set(result["machine"])
    assert result["comparable"] and result["machine"]["device"] == "cpu"
    nb, ours = result["notebook"], result["ours"]
    assert nb["pipeline"] in ("torchvision", "pil")
    for side in (nb, ours):
        assert len(side["runs"]) == 1 and len(side["runs"][0]["epoch_seconds"]) == 1
        s = side["seconds_per_epoch"]
        assert 0 < s["min"] <= s["median"] <= s["max"]
        assert 0.0 <= side["test_accuracy"] <= 1.0
    assert result["speedup"] == nb["seconds_per_epoch"]["median"] / ours["seconds_per_epoch"]["median"]
    # Same seed, same init, different shuffles: the losses after one epoch are close.
    assert nb["final_train_loss"] == pytest.approx(ours["final_train_loss"], abs=0.05)
    text = format_bench(result)
    assert "speed-up" in text and "parity" in text and f"{ours['final_train_loss']:.4f}" in text


@pytest.mark.slow
def test_a_side_whose_epochs_varied_a_lot_is_called_unsteady_in_the_table(tiny_idx_dir):
    def side(low, high):
        return {"seconds_per_epoch": {"median": low, "min": low, "max": high}}

    assert unsteady({"notebook": side(6.0, 7.0), "ours": side(0.6, 1.2)}) == ["ours"]
    assert unsteady({"notebook": side(6.0, 8.0), "ours": side(0.6, 0.7)}) == ["notebook"]
    result = run_bench("seed", device="cpu", epochs=1, repeats=1, data_dir=tiny_idx_dir)
    assert result["unsteady"] == []  # one epoch per side: nothing to compare
    assert "unsteady" not in format_bench(result)
    result["ours"]["seconds_per_epoch"] = {"median": 0.6, "min": 0.6, "max": 1.2}
    result["unsteady"] = ["ours"]
    assert "unsteady (ours): epochs took 0.600-1.200 s (2.00x apart)" in format_bench(result)


@pytest.mark.slow
def test_cli_bench_prints_the_table(tiny_idx_dir, capsys):
    code = main(["bench", "--device", "cpu", "--epochs", "1", "--repeats", "1", "--data-dir", str(tiny_idx_dir)])
    assert code == 0
    assert "speed-up" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_bench_json_for_another_recipe_reports_the_time_to_98(tiny_idx_dir, capsys):
    code = main(["bench", "--recipe", "fast", "--device", "cpu", "--epochs", "2", "--repeats", "1",
                 "--data-dir", str(tiny_idx_dir), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)  # one document, progress went to stderr
    ours = result["ours"]
    assert result["recipe"] == "fast" and not result["comparable"]
    assert result["notebook"]["epochs"] == 1 and ours["epochs"] == 2
    accuracies = ours["runs"][0]["epoch_test_accuracy"]
    assert len(accuracies) == 2 and None not in accuracies  # eval after every epoch for the time to 98%
    assert ours["reached_target"] == any(a >= result["target_accuracy"] for a in accuracies)
    assert "98%" in format_bench(result)


@pytest.mark.parametrize("flag", [["--repeats", "0"], ["--epochs", "-1"], ["--recipe", "nope"]])
def test_cli_bench_rejects_bad_values_with_exit_2(flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", *flag])
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err
