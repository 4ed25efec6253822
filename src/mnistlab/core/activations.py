"""What a network's hidden layers do with one image: their outputs, caught with forward hooks.

The hooks sit on the activation modules of the `nn.Sequential` models of
`models.py`: for the MLP after every hidden activation (the notebook's 128 and
64 units), for the CNN after the first block's activation (its 32 feature maps,
before pooling). They record only inside `ActivationTap.run()`, and only for
the thread that asked, so one forward pass serves both the prediction and
the picture of the hidden layers, and several threads may share one model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
from torch import nn

from ..base.models import ACTIVATION_MODULES, CNN

T = TypeVar("T")


@dataclass
class Layer:
    """One hidden layer's output for one image."""

    name: str  # e.g. "hidden 1"
    description: str  # e.g. "Linear(784, 128) + ReLU"
    values: np.ndarray  # float32: (units,) for the MLP, (channels, height, width) for the CNN


class ActivationTap:
    """Forward hooks on a model's hidden activations (see the module docstring)."""

    def __init__(self, model: nn.Module):
        self._local = threading.local()
        self._names: list[tuple[str, str]] = []
        activation_types = tuple(ACTIVATION_MODULES.values())
        modules = list(model.children())
        taps = [i for i, m in enumerate(modules) if isinstance(m, activation_types)]
        if isinstance(model, CNN):
            taps = taps[:1]  # the first block: maps still at the input's resolution
        for number, i in enumerate(taps, start=1):
            self._names.append((f"hidden {number}", describe_layer(modules, i)))
            modules[i].register_forward_hook(self._hook(number - 1))  # for the model's life: served models keep it

    @property
    def layers(self) -> list[tuple[str, str]]:
        """(name, description) of each tapped layer, in forward order."""
        return list(self._names)

    def _hook(self, index: int):
        def hook(module: nn.Module, inputs, output) -> None:
            record = getattr(self._local, "record", None)
            if record is not None:
                record[index] = output.detach()[0].float().cpu().numpy()  # the first image of the batch

        return hook

    def run(self, forward: Callable[[], T]) -> tuple[T, list[Layer]]:
        """Call `forward` (which runs the model once) and return its result with the
        tapped layers' outputs for the first image of its batch."""
        record: dict[int, np.ndarray] = {}
        self._local.record = record
        try:
            out = forward()
        finally:
            self._local.record = None
        return out, [Layer(name, description, record[i])
                     for i, (name, description) in enumerate(self._names) if i in record]


def describe_layer(modules: list[nn.Module], index: int) -> str:
    """The layer that feeds activation `index`, and the activation: `Linear(784, 128) + ReLU`."""
    activation = type(modules[index]).__name__
    for module in reversed(modules[:index]):
        if isinstance(module, nn.Linear):
            return f"Linear({module.in_features}, {module.out_features}) + {activation}"
        if isinstance(module, nn.Conv2d):
            k = "x".join(str(s) for s in module.kernel_size)
            extra = " + BatchNorm" if isinstance(modules[index - 1], nn.BatchNorm2d) else ""
            return f"Conv2d({module.in_channels}, {module.out_channels}, {k}){extra} + {activation}"
    return activation
