"""A faster training step for the MLP: its forward and backward written by hand.

At batch 64 the notebook's network does little arithmetic per step (29 million
floating-point operations, about 130 us on one core of the development
machine), and PyTorch's general machinery around it costs as much again:
autograd records a graph of some 40 nodes and walks it back, every gradient is
allocated afresh, written, and read back by the optimiser. Written out, a step
is the few tensor operations the arithmetic needs:

    forward   h_l = act(h_(l-1) W_l^T + b_l),  log p = log_softmax(h_(L-1) W_L^T + b_L)
    loss      mean over the batch of -log p[y]; with label smoothing e,
              (1 - e) of that plus e/classes of the mean of -sum(log p)
    backward  g_L = (p - target) / N, target the one-hot labels (smoothed);
              for each layer from the last: W_l.grad = g_l^T h_(l-1),
              b_l.grad = sum of g_l over the batch, g_(l-1) = act'(g_l W_l)

computed by the kernels autograd calls (addmm, mm, log_softmax, nll_loss,
threshold_backward, tanh_backward, ...), so losses and gradients are
autograd's up to the order of float sums (tests/test_fused.py). The gradients
go into the same `.grad` tensors every step, and torch.optim's own
`optimizer.step()` applies them: the optimiser, its state dict, schedules,
checkpoints and resuming are untouched. With plain SGD (the notebook's) the
update is folded into the gradient's product instead (see FusedMLP).

The training loop drives either step through one interface:

    step = make_step(model, optimizer, loss_fn)   # FusedMLP for an MLP, else AutogradStep
    for xb, yb in batches:
        step.zero_grad()
        loss = step.loss(xb, yb)     # the batch's mean loss, a 0-dim tensor
        step.backward(loss)
        step.step()                  # then the schedule's step, as before

`StackedMLP` is the same for K networks whose tensors are stacked (batched.py).
benchmarks/cpu_speed.py measures both against autograd (docs/cpu-speed.md).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..base.models import MLP

_aten = torch.ops.aten
_IGNORE_INDEX = -100  # nn.NLLLoss's and nn.CrossEntropyLoss's default; their only one fused here
_MEAN = 1  # the reduction code of "mean" in aten's loss functions


class AutogradStep:
    """The notebook's step, as PyTorch writes it: zero_grad, loss, backward, step."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(self.model(x), y)

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> None:
        self.optimizer.step()


# ---------------------------------------------------------------------------
# Activations: forward, and the gradient through it from what the forward kept

class _Activation:
    """An activation's forward (in place where its backward needs only the output) and backward."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor],
                 backward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], keeps_input: bool):
        self.forward, self.backward, self.keeps_input = forward, backward, keeps_input


def _activation(module: nn.Module) -> _Activation | None:
    """What FusedMLP needs of one of models.ACTIVATION_MODULES (None for anything else)."""
    if type(module) is nn.ReLU:  # autograd's ReluBackward: threshold_backward on the output
        return _Activation(torch.relu_, lambda g, out: _aten.threshold_backward.default(g, out, 0), False)
    if type(module) is nn.Tanh:
        return _Activation(torch.tanh_, _aten.tanh_backward.default, False)
    if type(module) is nn.Sigmoid:
        return _Activation(torch.sigmoid_, _aten.sigmoid_backward.default, False)
    if type(module) is nn.GELU:  # its backward needs the input: not in place
        approximate = module.approximate
        return _Activation(lambda z: nn.functional.gelu(z, approximate=approximate),
                           lambda g, z: _aten.gelu_backward.default(g, z, approximate=approximate), True)
    return None


# ---------------------------------------------------------------------------
# When the hand-written step applies

def _label_smoothing(loss_fn: nn.Module) -> float | None:
    """The label smoothing of a plain mean NLL or cross-entropy loss; None for any other loss."""
    if type(loss_fn) not in (nn.NLLLoss, nn.CrossEntropyLoss):
        return None
    if loss_fn.weight is not None or loss_fn.reduction != "mean" or loss_fn.ignore_index != _IGNORE_INDEX:
        return None
    return float(getattr(loss_fn, "label_smoothing", 0.0))


def fusable(model: nn.Module, loss_fn: nn.Module) -> str | None:
    """None when FusedMLP computes this model's step exactly; else why it does not."""
    if not isinstance(model, MLP):
        return "not an MLP"
    layers = list(model)
    has_log_softmax = isinstance(layers[-1], nn.LogSoftmax)
    if has_log_softmax:
        if layers[-1].dim not in (1, -1):
            return "LogSoftmax over another dimension than the classes"
        if type(loss_fn) is not nn.NLLLoss:
            return "a LogSoftmax output goes with NLLLoss"
        layers = layers[:-1]
    elif type(loss_fn) is not nn.CrossEntropyLoss:
        return "logits go with CrossEntropyLoss"
    if _label_smoothing(loss_fn) is None:
        return "a loss with class weights, another reduction or another ignore_index"
    if not isinstance(layers[0], nn.Flatten) or layers[0].start_dim != 1 or layers[0].end_dim != -1:
        return "no Flatten first"
    body = layers[1:]
    linears, activations = body[0::2], body[1::2]
    if len(linears) != len(activations) + 1 or not all(type(m) is nn.Linear and m.bias is not None
                                                       for m in linears):
        return "not Linear and activation layers in turn"
    if any(_activation(a) is None for a in activations):
        return "an activation other than relu, tanh, sigmoid or gelu"
    return None


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module) -> "AutogradStep | FusedMLP":
    """The hand-written step when it applies to the model and loss (`fusable`), else autograd's."""
    if fusable(model, loss_fn) is None:
        return FusedMLP(model, optimizer, loss_fn)
    return AutogradStep(model, optimizer, loss_fn)


# ---------------------------------------------------------------------------
# The step

def _plain_sgd(optimizer: torch.optim.Optimizer, params: list[torch.Tensor]) -> bool:
    """Whether `optimizer` is torch.optim.SGD without momentum, weight decay or maximize over exactly `params`:
    then its whole update is p -= lr * grad, and it keeps no state."""
    if type(optimizer) is not torch.optim.SGD or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    return (group["momentum"] == 0 and group["weight_decay"] == 0 and not group["maximize"]
            and not group.get("differentiable") and {id(p) for p in group["params"]} == {id(p) for p in params}
            and len(group["params"]) == len(params))


class FusedMLP:
    """The step of an `MLP` (Flatten, Linear and activation in turn, Linear, optional LogSoftmax) with
    NLLLoss or CrossEntropyLoss (any label smoothing), without autograd.

    `loss` keeps what `backward` needs: each layer's input and the
    log-probabilities. The last layer is computed transposed, classes x batch,
    because log_softmax over 10 contiguous numbers per image is several times
    slower than over the batch dimension (and enters a parallel region with
    more than one thread). `backward` turns these into each layer's output
    gradient `g_l` and writes every parameter's gradient into its `.grad`
    (overwriting after `zero_grad()`, adding to it otherwise, as autograd does);
    `step` runs the optimiser.

    With plain SGD (the notebook's: no momentum, no weight decay), the
    gradients are not written: `step` folds each into its update, W -= lr g^T h
    as one matrix product into W, which saves writing every gradient and
    reading it back (a third of the step; docs/cpu-speed.md). Plain SGD keeps
    no state, so its state dict is the same; its learning rate is read from
    `param_groups` every step, so schedules work. Its own `step()` runs once,
    on the first step, with no gradient to apply, so that a schedule finds it
    stepped; `.grad` stays None.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: nn.Module):
        why = fusable(model, loss_fn)
        if why is not None:
            raise ValueError(f"FusedMLP does not apply: {why}")
        self.model, self.optimizer = model, optimizer
        self.linears: list[nn.Linear] = [m for m in model if type(m) is nn.Linear]
        self.activations = [_activation(m) for m in model if _activation(m) is not None]
        self.smoothing = _label_smoothing(loss_fn)
        self.params = list(model.parameters())
        self.fold = _plain_sgd(optimizer, self.params)
        last = self.linears[-1]
        self.classes = torch.arange(last.out_features, device=last.weight.device)[:, None]
        self.overwrite = True  # the next backward writes the gradients instead of adding to them
        self.saved: tuple | None = None
        self.last_loss: torch.Tensor | None = None
        self.pending: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []  # (layer, g, input) to fold in
        self.stepped = False  # whether the optimiser's own step has run (with plain SGD: once)

    def zero_grad(self) -> None:
        self.overwrite = True
        if self.fold:
            self.pending = []
            for p in self.params:
                p.grad = None

    @torch.no_grad()
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's mean loss; what its gradient needs is kept for `backward`."""
        h = x.flatten(1)
        inputs, kept = [], []  # each linear layer's input; what each activation's backward needs
        for linear, act in zip(self.linears, self.activations):
            inputs.append(h)
            z = torch.addmm(linear.bias, h, linear.weight.t())
            h = act.forward(z)
            kept.append(z if act.keeps_input else h)
        inputs.append(h)
        last = self.linears[-1]
        log_p = torch.log_softmax(torch.addmm(last.bias[:, None], last.weight, h.t()), 0)  # classes x batch
        loss, _ = _aten.nll_loss_forward.default(log_p.t(), y, None, _MEAN, _IGNORE_INDEX)
        if self.smoothing:
            # nn.CrossEntropyLoss's label smoothing, term for term: the mean over the batch of
            # -sum(log p) over the classes, mixed in with weight smoothing / classes.
            smooth = -log_p.sum(0).sum() / len(y)
            loss = (1 - self.smoothing) * loss + smooth * (self.smoothing / log_p.shape[0])
        self.saved = (inputs, kept, log_p, y)
        self.last_loss = loss
        return loss

    @torch.no_grad()
    def backward(self, loss: torch.Tensor) -> None:
        """The gradients of `loss`, which must be what `loss()` returned last."""
        if self.saved is None or loss is not self.last_loss:
            raise RuntimeError("backward() takes the loss that loss() returned last, once")
        inputs, kept, log_p, y = self.saved
        self.saved = None  # once, as autograd frees its graph
        # d loss / d logits = (softmax - target) / N, target the one-hot labels (smoothed), classes x batch.
        target = (self.classes == y).to(log_p.dtype)
        if self.smoothing:
            target = target * (1 - self.smoothing) + self.smoothing / log_p.shape[0]
        g = (torch.exp(log_p) - target) / len(y)
        last = self.linears[-1]
        self._gradient(last, g, inputs[-1], transposed=True)
        g = g.t()
        for i in range(len(self.linears) - 1, 0, -1):
            g = self.activations[i - 1].backward(torch.mm(g, self.linears[i].weight), kept[i - 1])
            self._gradient(self.linears[i - 1], g, inputs[i - 1])
        self.overwrite = False

    def _gradient(self, linear: nn.Linear, g: torch.Tensor, h: torch.Tensor, transposed: bool = False) -> None:
        """The layer's weight and bias gradients from its output gradient g (batch x out, or out x batch when
        `transposed`) and its input h: written into .grad, or kept for `step` to fold into the update."""
        g_rows = g if transposed else g.t()  # out x batch
        if self.fold:
            self.pending.append((linear, g_rows, h))
            return
        self._write(linear.weight, torch.mm, (g_rows, h))
        self._write(linear.bias, torch.sum, (g_rows, 1))

    def _write(self, param: torch.Tensor, op: Callable, args: tuple) -> None:
        """param.grad = op(*args), computed into the existing .grad tensor; or added to it."""
        if param.grad is None:
            param.grad = op(*args)
        elif self.overwrite:
            op(*args, out=param.grad)
        else:
            param.grad.add_(op(*args))

    @torch.no_grad()
    def step(self) -> None:
        """The optimiser's update; with plain SGD, p -= lr * grad done here (see the class)."""
        if not self.fold:
            self.optimizer.step()
            return
        lr = float(self.optimizer.param_groups[0]["lr"])  # what a schedule set
        for linear, g_rows, h in self.pending:  # SGD's p.add_(grad, alpha=-lr), the product done in place
            linear.weight.addmm_(g_rows, h, alpha=-lr)
            linear.bias.add_(g_rows.sum(1), alpha=-lr)
        self.pending = []
        if not self.stepped:
            # Once, so that a schedule finds the optimiser stepped before it (it warns otherwise);
            # it finds no gradient to apply. Run every step, it would cost 50 of the 300 us.
            self.optimizer.step()
            self.stepped = True


# ---------------------------------------------------------------------------
# K networks at once

class StackedMLP:
    """FusedMLP's forward and backward for K MLPs of one architecture trained on the same batch, their
    tensors stacked along a first dimension of K (batched.Stack's layout: `params[name][k]` is member k's).

    Activations are kept members x features x batch, so that each layer of all
    members is one batched product (`baddbmm`), and the first layer, whose input
    all members share, one plain product of all members' weights at once: a
    (K*out x 784) by (784 x batch) product, the largest and most efficient
    there is. The members' losses are independent: member k's gradient is that
    of its own loss, and a member whose numbers are not finite does not touch
    the others'.
    """

    def __init__(self, template: nn.Module, loss_fn: nn.Module):
        why = fusable(template, loss_fn)
        if why is not None:
            raise ValueError(f"StackedMLP does not apply: {why}")
        named = dict(template.named_children())
        self.layers = [(f"{name}.weight", f"{name}.bias") for name, m in named.items() if type(m) is nn.Linear]
        self.activations = [_activation(m) for m in template if _activation(m) is not None]
        self.smoothing = _label_smoothing(loss_fn)
        self.saved: tuple | None = None
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (layer, its output gradient, its input)

    def loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each member's mean loss on the batch, shape (K,)."""
        with torch.no_grad():
            x = x.flatten(1)
            inputs, kept = [x], []
            h = x
            for i, (weight, bias) in enumerate(self.layers):
                w, b = params[weight], params[bias]
                k, out = b.shape
                if i == 0:  # every member's first layer in one product: (K*out x in) (in x N)
                    z = torch.addmm(b.reshape(k * out, 1), w.reshape(k * out, -1), h.t()).view(k, out, -1)
                else:
                    z = torch.baddbmm(b[:, :, None], w, h)
                if i == len(self.layers) - 1:
                    break
                act = self.activations[i]
                h = act.forward(z)
                kept.append(z if act.keeps_input else h)
                inputs.append(h)
            log_p = torch.log_softmax(z, 1)  # K x classes x N
            classes = log_p.shape[1]
            target = (torch.arange(classes, device=y.device)[:, None] == y).to(log_p.dtype)
            if self.smoothing:
                target = target * (1 - self.smoothing) + self.smoothing / classes
            # Cross-entropy with (smoothed) one-hot targets: -sum(target * log p) / N, for all members in one
            # matrix-vector product. With one-hot targets it is NLLLoss; smoothed, CrossEntropyLoss's smoothing.
            losses = torch.mv(log_p.view(k, -1), target.view(-1)).div_(-len(y))
        self.saved = (params, inputs, kept, log_p, target)
        return losses

    @torch.no_grad()
    def backward(self) -> None:
        """Each member's output gradient of every layer, from the last `loss`; kept for `gradients` or `sgd`."""
        if self.saved is None:
            raise RuntimeError("backward() needs a loss() first, once")
        params, inputs, kept, log_p, target = self.saved
        self.saved = None
        g = (torch.exp(log_p) - target) / log_p.shape[2]  # d loss_k / d logits, K x classes x N
        self.pending = []
        for i in range(len(self.layers) - 1, -1, -1):
            self.pending.append((i, g, inputs[i]))
            if i:
                w = params[self.layers[i][0]]
                g = self.activations[i - 1].backward(torch.bmm(w.transpose(1, 2), g), kept[i - 1])

    def gradients(self) -> dict[str, torch.Tensor]:
        """Every parameter's gradient, stacked like the parameters."""
        grads = {}
        with torch.no_grad():
            for i, g, h in self.pending:
                weight, bias = self.layers[i]
                k, out, n = g.shape
                if i == 0:
                    grads[weight] = torch.mm(g.view(k * out, n), h).view(k, out, -1)
                else:
                    grads[weight] = torch.bmm(g, h.transpose(1, 2))
                grads[bias] = g.sum(2)
        return grads

    @torch.no_grad()
    def sgd(self, params: dict[str, torch.Tensor], rate: torch.Tensor) -> None:
        """Plain SGD with member k's rate rate[k]: p -= rate[k] * grad, each weight gradient's product done
        into the weights (addmm_/baddbmm_) instead of written and read back."""
        for i, g, h in self.pending:
            weight, bias = self.layers[i]
            w = params[weight]
            k, out, n = g.shape
            scaled = g * rate.view(k, 1, 1)
            if i == 0:
                w.view(k * out, -1).addmm_(scaled.view(k * out, n), h, alpha=-1)
            else:
                w.baddbmm_(scaled, h.transpose(1, 2), alpha=-1)
            params[bias].sub_(scaled.sum(2))
        self.pending = []
