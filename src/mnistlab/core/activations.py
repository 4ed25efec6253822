"""What a network's hidden layers do with one image: which layers those are, and their outputs.

For the `nn.Sequential` models of `models.py` they are the outputs of the activation modules: for
the MLP after every hidden activation (the notebook's 128 and 64 units), for the CNN after the first
block's activation (its 32 feature maps, before pooling). The forward pass that predicts keeps them
(`models.run_layers`), so one pass serves both the prediction and the picture of the hidden layers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..base.models import ACTIVATION_MODULES, CNN


@dataclass
class Layer:
    """One hidden layer's output for one image."""

    name: str  # e.g. "hidden 1"
    description: str  # e.g. "Linear(784, 128) + ReLU"
    values: np.ndarray  # float32: (units,) for the MLP, (channels, height, width) for the CNN


class ActivationTap:
    """The hidden activations of a model (see the module docstring): their numbers among its layers,
    for `models.run_layers`, and their outputs as `Layer`s."""

    def __init__(self, model: nn.Module):
        activation_types = tuple(ACTIVATION_MODULES.values())
        modules = list(model.children())
        taps = [i for i, m in enumerate(modules) if isinstance(m, activation_types)]
        if isinstance(model, CNN):
            taps = taps[:1]  # the first block: maps still at the input's resolution
        self.indices = taps  # numbers among the model's layers
        self._names = [(f"hidden {number}", describe_layer(modules, i)) for number, i in enumerate(taps, start=1)]

    @property
    def layers(self) -> list[tuple[str, str]]:
        """(name, description) of each tapped layer, in forward order."""
        return list(self._names)

    def outputs(self, kept: dict[int, torch.Tensor]) -> list[Layer]:
        """The tapped layers' outputs for the first image of the batch, from what `run_layers` kept."""
        return [Layer(name, description, kept[i].detach()[0].float().cpu().numpy())
                for i, (name, description) in zip(self.indices, self._names) if i in kept]


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
