"""The CUDA path: the graph-captured step gives the same losses as eager execution.

These tests need a CUDA device and are skipped, with the reason shown, elsewhere.
"""

import pytest
import torch

from mnistlab.config import recipe
from mnistlab.training import train

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
