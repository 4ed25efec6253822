"""The hand-written MLP step (core/fused.py) is autograd's step: the same losses, gradients, updates and
optimiser state, for every activation, output, label smoothing and hidden sizes, one network or K stacked."""

import itertools
import warnings

import pytest
import torch
from torch import nn

from mnistlab.base.models import CNN, MLP, loss_function
from mnistlab.core.fused import AutogradStep, FusedMLP, StackedMLP, fusable, make_step

ACTIVATIONS = ("relu", "tanh", "gelu", "sigmoid")
OUTPUTS = (("logits", 0.0), ("logits", 0.1), ("log_softmax", 0.0))  # (output, label smoothing)
HIDDEN = ((128, 64), (7,), (33, 5, 17))
# Float sums in another order: a few units in the last place of float32 on values of order 1.
TOL = dict(rtol=1e-5, atol=1e-6)


def twins(hidden=(128, 64), activation="relu", output="logits", seed=0):
    """Two MLPs with the same weights."""
    torch.manual_seed(seed)
    a = MLP((1, 28, 28), hidden, 10, activation, output)
    b = MLP((1, 28, 28), hidden, 10, activation, output)
    b.load_state_dict(a.state_dict())
    return a, b


def batch(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def momentum_sgd(params):
    # Not plain SGD: the fused step writes every gradient into .grad for torch.optim to apply.
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


@pytest.mark.parametrize("activation, output_smoothing, hidden",
                         list(itertools.product(ACTIVATIONS, OUTPUTS, HIDDEN)))
def test_loss_and_gradients_are_autogradss(activation, output_smoothing, hidden):
    output, smoothing = output_smoothing
    a, b = twins(hidden, activation, output)
    loss_fn = loss_function(output, smoothing)
    x, y = batch()
    expected = loss_fn(a(x), y)
    expected.backward()
    step = make_step(b, momentum_sgd(b.parameters()), loss_fn)
    assert isinstance(step, FusedMLP) and not step.fold
    step.zero_grad()
    loss = step.loss(x, y)
    step.backward(loss)
    assert not loss.requires_grad and loss.shape == ()
    torch.testing.assert_close(loss, expected.detach(), **TOL)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q.grad, p.grad, **TOL, msg=name)


@pytest.mark.parametrize("activation, output_smoothing", list(itertools.product(ACTIVATIONS, OUTPUTS)))
def test_a_plain_sgd_step_moves_the_weights_as_torch_optim_does(activation, output_smoothing):
    output, smoothing = output_smoothing
    a, b = twins((33, 17), activation, output)
    loss_fn = loss_function(output, smoothing)
    plain = AutogradStep(a, torch.optim.SGD(a.parameters(), lr=0.1), loss_fn)
    fused = make_step(b, torch.optim.SGD(b.parameters(), lr=0.1), loss_fn)
    assert fused.fold  # the update folded into the weight-gradient product
    x, y = batch()
    for step in (plain, fused):
        step.zero_grad()
        step.backward(step.loss(x, y))
        step.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, **TOL, msg=name)
    assert all(q.grad is None for q in b.parameters())  # folded: nothing left for the optimiser to apply


def train_both(make_optimizer, steps, hidden=(128, 64), output="log_softmax", smoothing=0.0, schedule=False,
               batch_size=64):
    """`steps` steps of the same batches through autograd and through make_step; both models and optimisers."""
    a, b = twins(hidden, "relu", output)
    loss_fn = loss_function(output, smoothing)
    runs = []
    for model in (a, b):
        optimizer = make_optimizer(model.parameters())
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 - t / (2 * steps)) if schedule else None
        step = (AutogradStep if model is a else make_step)(model, optimizer, loss_fn)
        losses = []
        for i in range(steps):
            x, y = batch(batch_size, seed=i)
            step.zero_grad()
            loss = step.loss(x, y)
            step.backward(loss)
            step.step()
            if sched is not None:
                sched.step()
            losses.append(float(loss.detach()))
        runs.append((model, optimizer, losses))
    return runs


def test_three_hundred_steps_of_the_seed_recipe_follow_autograds_trajectory():
    (a, _, expected), (b, _, losses) = train_both(lambda ps: torch.optim.SGD(ps, lr=0.003), 300)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, **TOL)


def test_momentum_weight_decay_schedule_and_smoothing_keep_torch_optims_trajectory_and_state():
    make = lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4, fused=True)
    (a, opt_a, expected), (b, opt_b, losses) = train_both(make, 200, output="logits", smoothing=0.1, schedule=True)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-5, atol=1e-5)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)
    sa, sb = opt_a.state_dict(), opt_b.state_dict()  # what a checkpoint keeps, and resuming loads
    assert sa["param_groups"] == sb["param_groups"] and sa["state"].keys() == sb["state"].keys()
    for i in sa["state"]:
        torch.testing.assert_close(sb["state"][i]["momentum_buffer"], sa["state"][i]["momentum_buffer"],
                                   rtol=1e-4, atol=1e-5)


def test_adamw_keeps_torch_optims_trajectory():
    # Adam divides by the root of the squared gradient: rounding in near-zero gradients is magnified.
    (a, _, expected), (b, _, losses) = train_both(lambda ps: torch.optim.AdamW(ps, lr=1e-3), 30)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), rtol=1e-4, atol=1e-4)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4)


def test_plain_sgd_with_a_schedule_gives_no_step_order_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (a, _, expected), (b, _, losses) = train_both(lambda ps: torch.optim.SGD(ps, lr=0.1), 5, schedule=True)
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(expected), **TOL)


@pytest.mark.parametrize("make_optimizer", [lambda ps: torch.optim.SGD(ps, lr=0.1), momentum_sgd],
                         ids=["plain SGD", "momentum SGD"])
def test_without_zero_grad_gradients_add_up_as_autogradss_do(make_optimizer):
    a, b = twins((16,))
    loss_fn = loss_function("logits")
    steps = [AutogradStep(a, make_optimizer(a.parameters()), loss_fn),
             make_step(b, make_optimizer(b.parameters()), loss_fn)]
    for step in steps:
        step.zero_grad()
        for seed in (1, 2):  # two backward passes, one step: the update of the summed gradients
            step.backward(step.loss(*batch(32, seed)))
        step.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, **TOL)


def test_backward_takes_the_last_loss_once():
    model = MLP((1, 28, 28), (8,), 10)
    step = make_step(model, torch.optim.SGD(model.parameters(), lr=0.1), loss_function("logits"))
    x, y = batch(8)
    first = step.loss(x, y)
    second = step.loss(x, y)
    with pytest.raises(RuntimeError, match="the loss that loss\\(\\) returned last"):
        step.backward(first)
    step.backward(second)
    with pytest.raises(RuntimeError, match="once"):
        step.backward(second)


def test_what_is_not_a_fusable_mlp_trains_through_autograd():
    mlp = MLP((1, 28, 28), (8,), 10)
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.1)
    cnn = CNN((1, 28, 28), (), 10)
    assert fusable(cnn, loss_function("logits")) == "not an MLP"
    assert isinstance(make_step(cnn, sgd(cnn), loss_function("logits")), AutogradStep)
    assert "class weights" in fusable(mlp, nn.CrossEntropyLoss(weight=torch.ones(10)))
    assert "class weights" in fusable(mlp, nn.CrossEntropyLoss(reduction="sum"))
    assert fusable(mlp, nn.NLLLoss()) == "logits go with CrossEntropyLoss"
    odd = MLP((1, 28, 28), (8,), 10)
    odd[2] = nn.LeakyReLU()
    assert "activation" in fusable(odd, loss_function("logits"))
    with pytest.raises(ValueError, match="does not apply: not an MLP"):
        FusedMLP(cnn, sgd(cnn), loss_function("logits"))


# ---------------------------------------------------------------------------
# K networks stacked

def stacked(models):
    """The members' tensors stacked as batched.Stack holds them."""
    return {name: torch.stack([dict(m.named_parameters())[name].detach() for m in models]).requires_grad_()
            for name, _ in models[0].named_parameters()}


@pytest.mark.parametrize("activation, output_smoothing, hidden",
                         list(itertools.product(ACTIVATIONS, OUTPUTS, HIDDEN[1:])))
def test_k_stacked_members_get_each_its_own_loss_and_gradients(activation, output_smoothing, hidden):
    output, smoothing = output_smoothing
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(MLP((1, 28, 28), hidden, 10, activation, output))
    loss_fn = loss_function(output, smoothing)
    params = stacked(models)
    fused = StackedMLP(models[0], loss_fn)
    x, y = batch(32)
    losses = fused.loss(params, x, y)
    fused.backward()
    grads = fused.gradients()
    for k, model in enumerate(models):
        expected = loss_fn(model(x), y)
        expected.backward()
        torch.testing.assert_close(losses[k], expected.detach(), **TOL)
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[name][k], p.grad, **TOL, msg=f"member {k} {name}")


def test_stacked_plain_sgd_moves_each_member_at_its_own_rate():
    models = []
    for seed in range(3):
        torch.manual_seed(seed)
        models.append(MLP((1, 28, 28), (16, 8), 10))
    loss_fn = loss_function("logits")
    params = stacked(models)
    fused = StackedMLP(models[0], loss_fn)
    rates = torch.tensor([0.1, 0.0, 0.3])  # a member at rate 0 (diverged, or waiting) does not move
    x, y = batch(32)
    fused.loss(params, x, y)
    fused.backward()
    fused.sgd(params, rates)
    for k, model in enumerate(models):
        optimizer = torch.optim.SGD(model.parameters(), lr=float(rates[k]))
        loss_fn(model(x), y).backward()
        optimizer.step()
        for name, p in model.named_parameters():
            torch.testing.assert_close(params[name][k], p, **TOL, msg=f"member {k} {name}")
