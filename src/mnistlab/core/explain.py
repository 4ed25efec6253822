"""Why a network decided as it did, for one prepared 28x28 image: which pixels pushed a class up
(a saliency map) and what the first layer's most active units or filters look for.

Saliency is **integrated gradients** (Sundararajan, Taly and Yan, 2017) from a black image, the
MNIST background: the gradient of the class's log-probability, averaged along the straight path
from the black image to this one, times each pixel's grey level. The pixels' shares add up to the
change of the class's log-probability between the black image and this one (*completeness*, up to
the error of integrating in IG_STEPS steps, which `Saliency` reports). Gradient x input, the
cheaper alternative, is the gradient at the image alone: where a ReLU is saturated or a
probability is already near 1 it is near zero although the pixel matters, and its shares need not
add up to anything.

The first layer: for an MLP the 784 weights of each first-layer unit, seen as a 28x28 image (the
pattern that unit responds to); for a CNN each first convolution filter (3x3). Both ordered by how
strongly they respond to this image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..base.models import ACTIVATION_MODULES, Ensemble, log_probabilities
from .activations import describe_layer
from .checkpoint import Checkpoint

# Steps of the Riemann sum (midpoints) along the path. On the fast recipe's MLP and a
# one-epoch CNN, drawings and test images: see docs/lab.md for the measured completeness
# error against the number of steps.
IG_STEPS = 32
MLP_UNITS_SHOWN = 8  # first-layer units of an MLP returned, the most active first


@dataclass
class Saliency:
    """Integrated gradients of one class's log-probability for one image."""

    values: np.ndarray  # float32 (H, W): each pixel's share, in nats of log-probability (+ raises the class)
    target: int  # the class explained
    steps: int  # steps of the path integral
    change: float  # log p(target | image) - log p(target | black image): what the shares add up to

    @property
    def integration_error(self) -> float:
        """|sum of the shares - change|: how far the Riemann sum is from the exact integral."""
        return abs(float(self.values.sum(dtype=np.float64)) - self.change)


def integrated_gradients(checkpoint: Checkpoint, image: np.ndarray, target: int,
                         steps: int = IG_STEPS) -> Saliency:
    """The saliency map of class `target` for `image` (uint8 or float (H, W), 0 black .. 255 ink)."""
    if not 0 <= target < len(checkpoint.classes):
        raise ValueError(f"class {target} out of range: the model has {len(checkpoint.classes)} classes")
    model, output = checkpoint.model, checkpoint.output
    model.eval()
    pixels = torch.as_tensor(np.asarray(image, dtype=np.float32))
    alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps  # midpoints of `steps` equal parts
    with torch.enable_grad():
        path = (alphas[:, None, None] * pixels).requires_grad_(True)  # black (alpha 0) to the image (1)
        scores = log_probabilities(model, output, checkpoint.inputs(path))[:, target]
        # Gradients with respect to the path only: the weights' .grad is never touched, so threads
        # serving other requests from the same model are not disturbed.
        (gradients,) = torch.autograd.grad(scores.sum(), path)
    with torch.no_grad():
        ends = log_probabilities(model, output, checkpoint.inputs(torch.stack([torch.zeros_like(pixels),
                                                                                 pixels])))[:, target]
    values = (pixels * gradients.mean(dim=0)).numpy()
    return Saliency(values, target, steps, float(ends[1] - ends[0]))


@dataclass
class Unit:
    """One first-layer unit (MLP) or filter (CNN)."""

    index: int  # its place in the layer
    activation: float  # MLP: the unit's output for this image; CNN: the mean of its feature map
    weights: np.ndarray  # float32: (H, W) of the input for an MLP unit, (k, k) for a conv filter


@dataclass
class FirstLayer:
    kind: str  # "units" (an MLP's first Linear) or "filters" (a CNN's first Conv2d)
    description: str  # e.g. "Linear(784, 128) + ReLU"
    size: int  # units or filters in the layer
    units: list[Unit]  # the most active for this image first


def first_layer(checkpoint: Checkpoint, image: np.ndarray, top: int | None = MLP_UNITS_SHOWN) -> FirstLayer | None:
    """The first layer's weights, most active units first: `top` units of an MLP, every filter of a CNN.

    None for an ensemble: its members each have their own first layer.
    """
    model = checkpoint.model
    if isinstance(model, Ensemble):
        return None
    modules = list(model.children())
    end = next(i for i, m in enumerate(modules) if isinstance(m, tuple(ACTIVATION_MODULES.values())))
    layer = next(m for m in modules[:end] if isinstance(m, (nn.Linear, nn.Conv2d)))
    model.eval()
    with torch.no_grad():
        out = nn.Sequential(*modules[:end + 1])(checkpoint.inputs(np.asarray(image, dtype=np.float32)))[0]
    weights = layer.weight.detach().cpu().float()
    if isinstance(layer, nn.Conv2d):  # (filters, 1, k, k); strength: the mean of each feature map
        kind, strength, shown = "filters", out.mean(dim=(1, 2)), weights[:, 0]
        top = None
    else:  # (units, H*W); strength: each unit's output
        kind, strength, shown = "units", out, weights.reshape(len(weights), *np.shape(image))
    order = torch.argsort(strength, descending=True, stable=True)[:top]
    return FirstLayer(kind, describe_layer(modules, end), len(weights),
                      [Unit(int(i), float(strength[i]), shown[i].numpy()) for i in order])
