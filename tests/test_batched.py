"""Batched training: K networks at once are K single runs, each with its own seed and hyper-parameters,
given the same batch order; a member that diverges stops alone."""

import pytest
import torch
from safetensors.torch import load_file

from mnistlab.core import batched, training
from mnistlab.base.config import recipe

CPU = torch.device("cpu")
TOL = dict(rtol=1e-4, atol=1e-4)  # float rounding differs between batched and single kernels


def small(name="seed", **overrides):
    # No shifts: the tiny dataset's class *is* the position of a block.
    base = dict(epochs=2, batch_size=32, device="cpu", shift=0, train_size=200, val_size=40, data_seed=7)
    return recipe(name, **{**base, **overrides})


def run_group(configs, data_dir, last=None):
    splits = training.load_splits(configs[0], data_dir, CPU)
    group = batched.build_group(configs, splits, CPU)
    commits = []
    batched.fit_group(group, splits, CPU, last or configs[0].epochs,
                      lambda epoch, rows, diverged, together: commits.append((epoch, rows, diverged)), lambda line: None)
    return group, commits


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
    group, commits = run_group(configs, tiny_idx_dir)
    for k, config in enumerate(configs):
        single = training.train(config, out=tmp_path / str(k), data_dir=tiny_idx_dir)
        losses = [rows[k]["train_loss"] for _, rows, _ in commits]
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(single.summary["train_loss"]), **TOL)
        assert [rows[k]["val_accuracy"] for _, rows, _ in commits][-1] == pytest.approx(
            single.summary["val_accuracy"], abs=1 / 40)
        weights = load_file(str(single.run_dir / "model.safetensors"))
        mine = group.stack.member_model(k)
        for name in weights:
            torch.testing.assert_close(mine[name], weights[name], **TOL)


@pytest.mark.slow
def test_a_batch_norm_network_trains_batched_too(tmp_path, tiny_idx_dir):
    configs = [small("cnn", seed=1, lr=0.01, train_size=64, epochs=1, val_size=0),
               small("cnn", seed=2, lr=0.005, train_size=64, epochs=1, val_size=0)]
    group, _ = run_group(configs, tiny_idx_dir)
    single = training.train(configs[1], out=tmp_path / "cnn", data_dir=tiny_idx_dir)
    weights = load_file(str(single.run_dir / "model.safetensors"))
    mine = group.stack.member_model(1)
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


def test_a_diverging_member_is_frozen_and_marked_and_the_others_do_not_notice(tiny_idx_dir):
    calm = [small(seed=1), small(seed=3, lr=0.01)]
    wild = small(seed=2, lr=1e5)
    group, commits = run_group([calm[0], wild, calm[1]], tiny_idx_dir)
    alone, alone_commits = run_group(calm, tiny_idx_dir)
    assert commits[0][2] == [1] and commits[0][1][1] is None  # diverged in epoch 1, no row for it
    assert all(rows[1] is None and diverged == [] for _, rows, diverged in commits[1:])
    assert bool(group.stack.diverged[1]) and group.epochs_done == [2, 0, 2]
    for mine, theirs in ((0, 0), (2, 1)):
        assert ([rows[mine]["train_loss"] for _, rows, _ in commits]
                == pytest.approx([rows[theirs]["train_loss"] for _, rows, _ in alone_commits], rel=1e-6))
        for name, p in group.stack.params.items():
            torch.testing.assert_close(p[mine], alone.stack.params[name][theirs], rtol=1e-6, atol=1e-7)


def test_a_members_state_is_a_single_runs_state_and_continues_like_it(tiny_idx_dir):
    configs = [small("default", seed=1), small("default", seed=2, lr=0.05)]
    group, _ = run_group(configs, tiny_idx_dir, last=1)
    splits = training.load_splits(configs[1], tiny_idx_dir, CPU)
    trainee = training.build(configs[1], splits, CPU)
    trainee.restore(group.member_state(1))  # as `mnistlab train --resume` on a sweep's run directory does
    assert trainee.schedule.last_epoch == len(group.batches)
    single = training.train_epoch(trainee.model, trainee.optimizer, trainee.schedule, trainee.loss_fn,
                                  trainee.batches, trainee.generator)
    batched.fit_group(group, splits, CPU, 2, lambda *a: None, lambda line: None)
    mine = group.stack.member_model(1)
    for name, p in trainee.model.state_dict().items():
        torch.testing.assert_close(mine[name], p, **TOL)
    assert float(single) > 0


def test_configs_that_differ_only_in_member_fields_share_a_group():
    a = small("default", seed=1)
    assert batched.group_key(a) == batched.group_key(a.replace(seed=9, lr=0.5, momentum=0.0, schedule="constant"))
    assert batched.group_key(a) != batched.group_key(a.replace(batch_size=64))
    assert batched.group_key(a) != batched.group_key(a.replace(hidden=(256, 128)))
    with pytest.raises(ValueError, match="differ only"):
        batched.Stack([a, a.replace(hidden=(8,))], {}, CPU, 1)
