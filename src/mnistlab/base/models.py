"""The networks. A model is described by a small JSON-able dict (its architecture),
so that a checkpoint can rebuild it without the flags that trained it."""

from __future__ import annotations

import math
from typing import Any, Collection

import torch
from torch import nn

ACTIVATION_MODULES = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class MLP(nn.Sequential):
    """The notebook's network: Linear(784,128) ReLU Linear(128,64) ReLU Linear(64,10),
    with an optional LogSoftmax(dim=1) output (then paired with NLLLoss)."""

    def __init__(self, input_shape: tuple[int, ...], hidden: tuple[int, ...], num_classes: int,
                 activation: str = "relu", output: str = "logits"):
        sizes = [math.prod(input_shape), *hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in zip(sizes, sizes[1:]):
            layers += [nn.Linear(fan_in, fan_out), ACTIVATION_MODULES[activation]()]
        layers.append(nn.Linear(sizes[-1], num_classes))
        if output == "log_softmax":
            layers.append(nn.LogSoftmax(dim=1))
        super().__init__(*layers)


class CNN(nn.Sequential):
    """A small convnet: three blocks of 3x3 conv, batch norm, activation and 2x2 max
    pooling (32, 64, 128 channels), then one linear layer. `hidden` is ignored."""

    channels = (32, 64, 128)

    def __init__(self, input_shape: tuple[int, ...], hidden: tuple[int, ...], num_classes: int,
                 activation: str = "relu", output: str = "logits"):
        c_in, height, width = input_shape
        layers: list[nn.Module] = []
        for c_out in self.channels:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       ACTIVATION_MODULES[activation](), nn.MaxPool2d(2)]
            c_in, height, width = c_out, height // 2, width // 2  # each pooling halves the side
        layers += [nn.Flatten(), nn.Linear(c_in * height * width, num_classes)]
        if output == "log_softmax":
            layers.append(nn.LogSoftmax(dim=1))
        super().__init__(*layers)


MODELS = {"mlp": MLP, "cnn": CNN}


def mean_log_probabilities(member_log_probabilities: torch.Tensor) -> torch.Tensor:
    """log(mean_k p_k) from log p_k stacked on the first dimension, without leaving log space."""
    return torch.logsumexp(member_log_probabilities, dim=0) - math.log(member_log_probabilities.shape[0])


class Ensemble(nn.Module):
    """K networks of one architecture whose prediction is the mean of their class probabilities.

    `forward` returns the log of that mean: log-probabilities, so whatever takes
    the argmax, the log_softmax or the exp of a model's output works unchanged.
    Its state dict holds member k's tensors under `members.<k>.`.
    """

    def __init__(self, members: list[nn.Module], output: str = "logits"):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.output = output

    def member_log_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Each member's log-probabilities, shape (K, N, classes)."""
        return torch.stack([log_probabilities(m, self.output, x) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mean_log_probabilities(self.member_log_probabilities(x))


def architecture(model: str, input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] = (128, 64),
                 activation: str = "relu", output: str = "logits") -> dict[str, Any]:
    """The JSON description saved in every checkpoint, from which `build_model` rebuilds the network."""
    return {
        "model": model,
        "input_shape": list(input_shape),
        "hidden": list(hidden),
        "activation": activation,
        "output": output,
        "num_classes": num_classes,
    }


def training_flops(arch: dict[str, Any]) -> int:
    """Floating-point operations of one training example (forward and backward; 2 per multiply-add),
    counted as torch.utils.flop_counter counts them: the products of the linear and convolution layers.

    Backward costs each layer's forward again for its weight gradient, and once
    more for the gradient of its input, which the first layer does not need.
    The notebook's network: 454,400 (2 x 109,184 + 2 x 109,184 + 2 x 8,832).
    """
    c, height, width = arch["input_shape"]
    if arch["model"] == "cnn":
        layers = []
        for c_out in CNN.channels:
            layers.append(2 * height * width * c * c_out * 9)  # a 3x3 convolution, padded: same size out
            c, height, width = c_out, height // 2, width // 2
        layers.append(2 * c * height * width * arch["num_classes"])
    else:
        sizes = [c * height * width, *arch["hidden"], arch["num_classes"]]
        layers = [2 * a * b for a, b in zip(sizes, sizes[1:])]
    return 2 * sum(layers) + sum(layers[1:])


def step_flops(model: str, hidden: tuple[int, ...], batch_size: int, members: int = 1,
               input_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10) -> int:
    """Floating-point operations of one training step: `members` networks on a batch of `batch_size`."""
    return training_flops(architecture(model, input_shape, num_classes, hidden)) * batch_size * members


def build_model(arch: dict[str, Any]) -> nn.Module:
    """Rebuild a network from its architecture dict (as saved in a checkpoint)."""
    try:
        cls = MODELS[arch["model"]]
        return cls(tuple(arch["input_shape"]), tuple(arch["hidden"]), int(arch["num_classes"]),
                   arch.get("activation", "relu"), arch.get("output", "logits"))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"bad architecture description {arch!r}: {e}") from None


def log_probabilities(model: nn.Module, output: str, x: torch.Tensor) -> torch.Tensor:
    """Log-probabilities whatever the model's output layer (logits or LogSoftmax)."""
    return as_log_probabilities(model(x), output)


def as_log_probabilities(out: torch.Tensor, output: str) -> torch.Tensor:
    """A model's outputs as log-probabilities: its `output` layer is "logits" or "log_softmax"."""
    return out if output == "log_softmax" else torch.log_softmax(out, dim=1)


def run_layers(model: nn.Module, x: torch.Tensor, keep: Collection[int] = ()) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """model(x), and the outputs of the layers numbered `keep` (an nn.Sequential's children).

    An nn.Sequential without hooks runs layer after layer by each one's own `forward`: the very
    operations of model(x), bit for bit, without nn.Module's call machinery (looking for hooks, tracing
    state), which for one 28x28 image costs a third of the arithmetic. With hooks on it or its layers
    (or global ones), or another kind of model, it is model(x), its hooks run, and the kept outputs are
    caught with hooks of its own for the time of the call.
    """
    kept: dict[int, torch.Tensor] = {}
    if isinstance(model, nn.Sequential) and not _hooked(model):
        for i, layer in enumerate(model):
            x = layer.forward(x)
            if i in keep:
                kept[i] = x
        return x, kept
    catch = [model[i].register_forward_hook(lambda module, args, out, i=i: kept.__setitem__(i, out)) for i in keep]
    try:
        return model(x), kept
    finally:
        for handle in catch:
            handle.remove()


_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooked(model: nn.Sequential) -> bool:
    """Whether a hook would run when model(x) calls it and its layers (nn.Module's own and global ones)."""
    if any(getattr(nn.modules.module, f"_global{name}", None) for name in _HOOKS):
        return True
    return any(getattr(module, name) for module in (model, *model) for name in _HOOKS)


def loss_function(output: str, label_smoothing: float = 0.0) -> nn.Module:
    """The notebook's pairing: NLLLoss after a LogSoftmax output, else CrossEntropyLoss on logits."""
    if output == "log_softmax":
        return nn.NLLLoss()
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
