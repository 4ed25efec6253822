"""The CUDA path: the graph-captured step gives the same losses as eager execution, batched members
those of their single runs, and runs repeat exactly.

These tests need a CUDA device and are skipped, with the reason shown, elsewhere.
"""

import pytest
import torch

from mnistlab.base.config import recipe
from mnistlab.core.engine import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none here)")


@pytest.mark.parametrize("name", ["seed", "fast"])
def test_cuda_graph_matches_eager(tmp_path, tiny_idx_dir, name):
    config = recipe(name, epochs=2, batch_size=32, device="cuda", seed=0)
    logs: list[str] = []
    graph = train(config, out=tmp_path / "graph", data_dir=tiny_idx_dir, log=logs.append)
    eager = train(config.replace(cuda_graph=False), out=tmp_path / "eager", data_dir=tiny_idx_dir)
    assert any("captured" in line for line in logs), logs
    torch.testing.assert_close(torch.tensor(graph.summary["train_loss"]),
                               torch.tensor(eager.summary["train_loss"]), rtol=1e-4, atol=1e-5)
    assert graph.summary["test_accuracy"] == pytest.approx(eager.summary["test_accuracy"], abs=0.02)


def test_cuda_runs_are_deterministic(tmp_path, tiny_idx_dir):
    config = recipe("seed", epochs=1, batch_size=32, device="cuda", seed=5)
    a = train(config, out=tmp_path / "a", data_dir=tiny_idx_dir).summary["train_loss"]
    b = train(config, out=tmp_path / "b", data_dir=tiny_idx_dir).summary["train_loss"]
    assert a == pytest.approx(b, rel=1e-6)


def _batched(root, configs, data_dir):
    """A sweep's group on CUDA: each member's run directory and its losses."""
    from mnistlab.core import engine, runs

    paths = [root / str(k) for k in range(len(configs))]
    engine.train_group(paths, configs, data_dir=data_dir)
    return paths, [[row["train_loss"] for row in runs.read_state(p)["rows"]] for p in paths]


@pytest.mark.parametrize("name", ["seed", "default"])
def test_batched_members_on_cuda_equal_their_single_runs(tmp_path, tiny_idx_dir, name):
    from safetensors.torch import load_file

    base = recipe(name, epochs=2, batch_size=32, device="cuda", shift=0, data_seed=7, val_size=100)
    configs = [base.replace(seed=s, lr=base.lr * f) for s, f in ((1, 1.0), (2, 0.5), (3, 2.0))]
    paths, losses = _batched(tmp_path / "group", configs, tiny_idx_dir)
    for k, config in enumerate(configs):
        single = train(config, out=tmp_path / str(k), data_dir=tiny_idx_dir)
        torch.testing.assert_close(torch.tensor(losses[k]), torch.tensor(single.summary["train_loss"]),
                                   rtol=1e-4, atol=1e-4)
        weights = load_file(str(single.run_dir / "model.safetensors"))
        mine = load_file(str(paths[k] / "model.safetensors"))
        for tensor_name, tensor in weights.items():
            torch.testing.assert_close(mine[tensor_name].cpu(), tensor, rtol=1e-3, atol=1e-4)


def test_batched_training_on_cuda_is_deterministic(tmp_path, tiny_idx_dir):
    configs = [recipe("default", epochs=1, batch_size=32, device="cuda", seed=s, shift=1) for s in (0, 1)]
    configs = [c.replace(data_seed=0) for c in configs]
    _, a = _batched(tmp_path / "a", configs, tiny_idx_dir)
    _, b = _batched(tmp_path / "b", configs, tiny_idx_dir)
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), rtol=1e-6, atol=0)


def test_an_ensemble_trains_and_loads_on_cuda(tmp_path, tiny_idx_dir):
    from mnistlab.core.checkpoint import load_checkpoint
    from mnistlab.core.evaluation import evaluate

    config = recipe("seed", epochs=1, batch_size=32, device="cuda", ensemble=4)
    train(config, out=tmp_path / "e", data_dir=tiny_idx_dir)
    assert len(load_checkpoint(tmp_path / "e", "cuda").model.members) == 4
    assert len(evaluate(tmp_path / "e", data_dir=tiny_idx_dir, device="cuda").member_accuracy) == 4
