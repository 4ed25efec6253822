"""Batched training: K networks at once are K single runs, each with its own seed and hyper-parameters,
given the same batch order; a member that diverges stops alone."""

import pytest
import torch
from safetensors.torch import load_file

from mnistlab.core import batched, engine, runs, training
from mnistlab.base.config import recipe

CPU = torch.device("cpu")
TOL = dict(rtol=1e-4, atol=1e-4)  # float rounding differs between batched and single kernels


def small(name="seed", **overrides):
    # No shifts: the tiny dataset's class *is* the position of a block.
    base = dict(epochs=2, batch_size=32, device="cpu", shift=0, train_size=200, val_size=40, data_seed=7)
    return recipe(name, **{**base, **overrides})


def run_group(root, configs, data_dir, stop_after=None):
    """Train `configs` as one batched group (a sweep's), member k into root/k; each member's metric rows."""
    paths = [root / str(k) for k in range(len(configs))]
    engine.train_group(paths, configs, data_dir=data_dir, stop_after=stop_after)
    return paths, [runs.read_state(path)["rows"] for path in paths]


def member_weights(path):
    return load_file(str(path / "model.safetensors"))


MEMBERS = {
    "plain SGD": [small(seed=1), small(seed=2, lr=0.01), small(seed=3, lr=0.03)],
    "momentum, Nesterov, weight decay, one-cycle": [
        small("default", seed=1), small("default", seed=2, lr=0.05, momentum=0.5, nesterov=False),
        small("default", seed=3, weight_decay=0.0, schedule="constant"), small("default", seed=4, warmup=0.5)],
    "AdamW": [small("default", optimizer="adamw", seed=1, lr=0.003),
              small("default", optimizer="adamw", seed=2, lr=0.01, weight_decay=0.05)],
}


@pytest.mark.parametrize("kind", list(MEMBERS))
def test_each_member_equals_the_single_run_of_its_config(tmp_path, tiny_idx_dir, kind):
    configs = MEMBERS[kind]
    paths, rows = run_group(tmp_path / "group", configs, tiny_idx_dir)
    for k, config in enumerate(configs):
        single = engine.train(config, out=tmp_path / str(k), data_dir=tiny_idx_dir)
        losses = [row["train_loss"] for row in rows[k]]
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(single.summary["train_loss"]), **TOL)
        assert rows[k][-1]["val_accuracy"] == pytest.approx(single.summary["val_accuracy"], abs=1 / 40)
        weights, mine = member_weights(single.run_dir), member_weights(paths[k])
        for name in weights:
            torch.testing.assert_close(mine[name], weights[name], **TOL)


@pytest.mark.slow
def test_a_batch_norm_network_trains_batched_too(tmp_path, tiny_idx_dir):
    configs = [small("cnn", seed=1, lr=0.01, train_size=64, epochs=1, val_size=0),
               small("cnn", seed=2, lr=0.005, train_size=64, epochs=1, val_size=0)]
    paths, _ = run_group(tmp_path / "group", configs, tiny_idx_dir)
    single = engine.train(configs[1], out=tmp_path / "cnn", data_dir=tiny_idx_dir)
    weights, mine = member_weights(single.run_dir), member_weights(paths[1])
    assert any("running_var" in name for name in weights)  # the buffers follow their member too
    for name in weights:
        torch.testing.assert_close(mine[name].to(weights[name].dtype), weights[name], **TOL)


def test_from_the_same_weights_twice_the_rate_moves_twice_as_far(tiny_idx_dir):
    configs = [small(seed=5, lr=0.01), small(seed=5, lr=0.02)]
    splits = training.load_splits(configs[0], tiny_idx_dir, CPU)
    stack = batched.build_group(configs, splits, CPU).stack
    before = {name: p.detach().clone() for name, p in stack.params.items()}
    torch.testing.assert_close(before["1.weight"][0], before["1.weight"][1])  # the same seed: the same start
    stack.zero_grad()
    losses = stack.loss(splits.x[:32], splits.y[:32])
    stack.backward(losses)
    stack.step(losses, torch.tensor([0.01, 0.02]))
    for name, p in stack.params.items():
        moved = p.detach() - before[name]
        assert moved[0].abs().sum() > 0
        torch.testing.assert_close(moved[1], 2 * moved[0], rtol=1e-3, atol=1e-7)


def test_a_diverging_member_is_frozen_and_marked_and_the_others_do_not_notice(tmp_path, tiny_idx_dir):
    calm = [small(seed=1), small(seed=3, lr=0.01)]
    wild = small(seed=2, lr=1e5)
    paths, rows = run_group(tmp_path / "with", [calm[0], wild, calm[1]], tiny_idx_dir)
    alone, alone_rows = run_group(tmp_path / "alone", calm, tiny_idx_dir)
    wild_run = runs.read_state(paths[1])
    assert rows[1] == [] and "diverged" in wild_run["diverged"]["message"]  # diverged in epoch 1: epoch 0 kept
    assert runs.info(paths[1]).state == "diverged"
    for mine, theirs in ((0, 0), (2, 1)):
        assert ([r["train_loss"] for r in rows[mine]]
                == pytest.approx([r["train_loss"] for r in alone_rows[theirs]], rel=1e-6))
        for name, w in member_weights(paths[mine]).items():
            torch.testing.assert_close(w, member_weights(alone[theirs])[name], rtol=1e-6, atol=1e-7)


def test_a_members_run_resumed_alone_continues_like_the_group(tmp_path, tiny_idx_dir):
    configs = [small("default", seed=1), small("default", seed=2, lr=0.05)]
    paths, _ = run_group(tmp_path / "half", configs, tiny_idx_dir, stop_after=1)
    whole, _ = run_group(tmp_path / "whole", configs, tiny_idx_dir)
    # A sweep's run directory is a single run's: `mnistlab train --resume` continues it alone.
    alone = engine.resume(paths[1], data_dir=tiny_idx_dir)
    assert alone.summary["epochs"] == 2
    for name, w in member_weights(whole[1]).items():
        torch.testing.assert_close(member_weights(paths[1])[name], w, **TOL)


def test_configs_that_differ_only_in_member_fields_share_a_group():
    a = small("default", seed=1)
    assert batched.group_key(a) == batched.group_key(a.replace(seed=9, lr=0.5, momentum=0.0, schedule="constant"))
    assert batched.group_key(a) != batched.group_key(a.replace(batch_size=64))
    assert batched.group_key(a) != batched.group_key(a.replace(hidden=(256, 128)))
    with pytest.raises(ValueError, match="differ only"):
        batched.Stack([a, a.replace(hidden=(8,))], {}, CPU, 1)
