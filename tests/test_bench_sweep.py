"""bench --sweep: networks per second batched against one after another, measured in one process.
Never a time threshold: the result holds what it documents."""

import json

import pytest

from mnistlab.commands.bench import format_sweep_bench, run_sweep_bench
from mnistlab.cli import main


@pytest.mark.slow
def test_the_sweep_bench_times_each_k_batched_and_networks_one_after_another(tiny_idx_dir):
    result = run_sweep_bench("seed", device="cpu", members=(1, 3), sequential=1, data_dir=tiny_idx_dir)
    assert [row["networks"] for row in result["rows"]] == [1, 3]
    for row in result["rows"]:
        assert row["batched_seconds_per_epoch"] > 0
        assert row["batched_networks_per_second"] == pytest.approx(row["networks"] / row["batched_seconds_per_epoch"])
        assert len(row["ratios"]) == 1 and row["ratio"] == pytest.approx(
            row["batched_networks_per_second"] / row["one_after_another_networks_per_second"])
    table = format_sweep_bench(result)
    assert "batched / one after another" in table and table.count("\n3 ") == 1


def test_cli_bench_sweep_prints_json_and_refuses_members_alone(tiny_idx_dir, capsys):
    assert main(["bench", "--sweep", "--members", "2", "--device", "cpu", "--data-dir", str(tiny_idx_dir),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["networks"] == 2
    assert main(["bench", "--members", "2", "--data-dir", str(tiny_idx_dir)]) == 2
    assert main(["bench", "--sweep", "--members", "0,x", "--data-dir", str(tiny_idx_dir)]) == 2
    assert "--members 0,x" in capsys.readouterr().err
