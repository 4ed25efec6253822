"""What the page's Draw and Explore views compute: the preparation's steps, integrated gradients (against
captum's implementation, finite differences and their own completeness), the first layer's most active
units or filters, and every test image's answer behind the confusion matrix."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fake_digits
from PIL import Image

from mnistlab.base.models import Ensemble, architecture, build_model, log_probabilities
from mnistlab.base.prepare import BOX, centre_by_mass, prepare_image, prepare_steps
from mnistlab.core.checkpoint import Checkpoint, load_checkpoint
from mnistlab.core.evaluation import Answers, answers, evaluate, predictions
from mnistlab.core.explain import IG_STEPS, first_layer, integrated_gradients

CLASSES = [str(d) for d in range(10)]


def checkpoint_of(model: torch.nn.Module, arch: dict, output: str = "logits") -> Checkpoint:
    """A checkpoint held in memory, as `load_checkpoint` would give it."""
    meta = {"architecture": {**arch, "output": output}, "dataset": "mnist", "classes": CLASSES,
            "normalization": {"mean": 0.5, "std": 0.5}}
    return Checkpoint(model.eval(), meta, Path("in-memory"))


def network(kind: str, activation: str = "relu", seed: int = 0) -> Checkpoint:
    torch.manual_seed(seed)
    arch = architecture(kind, (1, 28, 28), 10, hidden=(32, 16), activation=activation)
    model = build_model(arch)
    if kind == "cnn":  # batch norm statistics other than the identity, as after training
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return checkpoint_of(model, arch)


def flagged_one() -> np.ndarray:
    """A 1 with a flag, dark ink on white, as an RGB array 240 high and 200 wide."""
    picture = np.full((240, 200, 3), 255, np.uint8)
    picture[40:200, 95:115] = 20  # the stem
    picture[40:60, 70:115] = 20  # the flag
    return picture


# ---------------------------------------------------------------------------
# The preparation's steps


def test_the_steps_are_those_of_prepare_image_itself():
    picture = flagged_one()
    steps = prepare_steps(picture)
    assert np.array_equal(steps.image, prepare_image(picture))
    assert steps.inverted  # dark ink on white paper was turned over
    assert np.array_equal(steps.grey, np.asarray(Image.fromarray(picture).convert("L"), dtype=np.float32))
    assert steps.ink.shape == steps.grey.shape and steps.ink.max() == 255 and steps.ink[0, 0] == 0
    rows, cols = steps.crop
    assert np.array_equal(steps.cropped, steps.ink[rows, cols])
    assert (steps.ink[:rows.start] < 127.5).all() and (steps.ink[rows.stop:] < 127.5).all()
    assert max(steps.fitted.shape) == BOX  # the 1 is taller than wide: 20 high, narrower
    assert steps.fitted.shape[1] < BOX
    assert np.array_equal(steps.image, np.round(centre_by_mass(steps.fitted)).astype(np.uint8))


def test_bright_ink_is_not_turned_over_and_forcing_it_is_kept():
    drawing = np.zeros((60, 60), np.uint8)
    drawing[10:50, 28:33] = 255
    assert not prepare_steps(drawing).inverted
    assert prepare_steps(255 - drawing, invert=True).inverted


# ---------------------------------------------------------------------------
# Integrated gradients


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_integrated_gradients_equal_captums(kind):
    captum = pytest.importorskip("captum.attr", reason="captum is the reference implementation (pip install captum)")
    checkpoint = network(kind)
    image = fake_digits(1, seed=7)[0][0]
    target = 3
    ours = integrated_gradients(checkpoint, image, target)

    def scores(pixels):
        return log_probabilities(checkpoint.model, checkpoint.output, checkpoint.inputs(pixels))

    pixels = torch.tensor(image, dtype=torch.float32)[None]
    theirs = captum.IntegratedGradients(scores).attribute(
        pixels, baselines=torch.zeros_like(pixels), target=target, n_steps=IG_STEPS, method="riemann_middle")
    assert ours.steps == IG_STEPS and ours.target == target
    assert np.allclose(ours.values, theirs[0].detach().numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_the_shares_add_up_to_the_change_from_a_black_image(kind):
    checkpoint = network(kind, seed=1)
    image = fake_digits(1, seed=8)[0][0]
    target = int(checkpoint.predict_proba(image)[0].argmax())
    logp = torch.log(checkpoint.predict_proba(np.stack([np.zeros_like(image), image])))[:, target]
    errors = []
    for steps in (4, 32, 256):
        saliency = integrated_gradients(checkpoint, image, target, steps)
        assert saliency.change == pytest.approx(float(logp[1] - logp[0]), abs=1e-5)
        errors.append(saliency.integration_error)
    assert errors[2] < errors[0]  # the Riemann sum converges to the integral ...
    assert errors[1] <= 0.05 * abs(saliency.change) + 1e-3  # ... and 32 steps are already close
    assert errors[2] <= 0.01 * abs(saliency.change) + 1e-4


def test_the_gradient_inside_is_the_one_finite_differences_give():
    # One step: the shares are pixel x gradient at half the image. The differences are taken on a float64
    # copy of the network, normalised here by hand; tanh keeps the function smooth.
    checkpoint = network("mlp", activation="tanh", seed=2)
    image = fake_digits(1, seed=9)[0][0].astype(np.float64)
    target = 5
    saliency = integrated_gradients(checkpoint, image, target, steps=1)
    model64 = copy.deepcopy(checkpoint.model).double()

    def score(pixels: np.ndarray) -> float:
        x = (torch.tensor(pixels, dtype=torch.float64).reshape(1, 1, 28, 28) / 255 - 0.5) / 0.5
        with torch.no_grad():
            return float(torch.log_softmax(model64(x), dim=1)[0, target])

    h = 1e-3  # grey levels
    for y, x in [(5, 9), (14, 14), (20, 3), (4 + 5, 4 + 6)]:
        bump = np.zeros_like(image)
        bump[y, x] = h
        gradient = (score(image / 2 + bump) - score(image / 2 - bump)) / (2 * h)
        assert saliency.values[y, x] == pytest.approx(image[y, x] * gradient, rel=1e-3, abs=1e-8)


def test_saliency_leaves_the_weights_gradients_alone_and_refuses_a_class_out_of_range():
    checkpoint = network("mlp")
    integrated_gradients(checkpoint, fake_digits(1, seed=1)[0][0], 2)
    assert all(p.grad is None for p in checkpoint.model.parameters())  # other threads share these weights
    with pytest.raises(ValueError, match="class 10 out of range"):
        integrated_gradients(checkpoint, fake_digits(1, seed=1)[0][0], 10)


def test_an_ensemble_is_explained_through_its_mean_probability():
    arch = architecture("mlp", (1, 28, 28), 10, hidden=(16,))
    torch.manual_seed(3)
    checkpoint = checkpoint_of(Ensemble([build_model(arch), build_model(arch)]), arch)
    saliency = integrated_gradients(checkpoint, fake_digits(1, seed=2)[0][0], 4, steps=128)
    assert saliency.integration_error <= 0.01 * abs(saliency.change) + 1e-4


# ---------------------------------------------------------------------------
# The first layer


def test_an_mlps_most_active_first_layer_units_with_their_weights_as_images():
    checkpoint = network("mlp", seed=4)
    image = fake_digits(1, seed=3)[0][0]
    layer = first_layer(checkpoint, image)
    linear = checkpoint.model[1]
    with torch.no_grad():
        outputs = torch.relu(linear(checkpoint.inputs(image).reshape(1, -1)))[0].numpy()
    expected = np.argsort(-outputs, kind="stable")[:8]
    assert layer.kind == "units" and layer.size == 32 and layer.description == "Linear(784, 32) + ReLU"
    assert [u.index for u in layer.units] == expected.tolist()
    for unit in layer.units:
        assert unit.activation == pytest.approx(float(outputs[unit.index]), abs=1e-6)
        assert np.array_equal(unit.weights, linear.weight[unit.index].detach().reshape(28, 28).numpy())


def test_a_cnns_first_filters_all_of_them_by_the_mean_of_their_feature_maps():
    checkpoint = network("cnn", seed=5)
    image = fake_digits(1, seed=4)[0][0]
    layer = first_layer(checkpoint, image, top=3)  # a CNN's 32 tiny filters are all shown
    conv, norm = checkpoint.model[0], checkpoint.model[1]
    with torch.no_grad():
        maps = torch.relu(norm(conv(checkpoint.inputs(image))))[0]
    means = maps.mean(dim=(1, 2)).numpy()
    assert layer.kind == "filters" and layer.size == 32 and len(layer.units) == 32
    assert layer.description == "Conv2d(1, 32, 3x3) + BatchNorm + ReLU"
    assert [u.index for u in layer.units] == np.argsort(-means, kind="stable").tolist()
    assert np.allclose([u.activation for u in layer.units], np.sort(means)[::-1], atol=1e-6)
    assert np.array_equal(layer.units[0].weights, conv.weight[layer.units[0].index, 0].detach().numpy())


def test_an_ensemble_has_no_single_first_layer():
    arch = architecture("mlp", (1, 28, 28), 10, hidden=(16,))
    assert first_layer(checkpoint_of(Ensemble([build_model(arch), build_model(arch)]), arch),
                       fake_digits(1, seed=1)[0][0]) is None


# ---------------------------------------------------------------------------
# Every test image's answer (the Explore view)


def test_the_answers_give_evaluates_confusion_and_predicts_probabilities(tiny_run):
    checkpoint = load_checkpoint(tiny_run)
    test = checkpoint.load_data(download=False).test
    found = answers(checkpoint, test, batch_size=64)  # several batches
    evaluation = evaluate(tiny_run)
    assert found.confusion().tolist() == evaluation.confusion
    assert found.correct == evaluation.correct
    assert np.array_equal(found.predicted, predictions(checkpoint.model, checkpoint.inputs(test.images)).numpy())
    assert np.allclose(found.probabilities, checkpoint.predict_proba(test.images).numpy(), atol=1e-6)
    assert np.array_equal(found.labels, test.labels.numpy())


def test_a_cells_images_come_most_confident_first_ties_by_index():
    probabilities = np.array([[0.2, 0.8], [0.1, 0.9], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7]], np.float32)
    found = Answers(["a", "b"], labels=np.array([0, 0, 0, 0, 1]), predicted=probabilities.argmax(1),
                    probabilities=probabilities)
    assert found.cell(0, 1).tolist() == [1, 0, 3]  # true a, said b: the most confidently wrong first
    assert found.cell(0, 0).tolist() == [2]
    assert found.cell(1, 0).tolist() == []
    assert found.confusion().tolist() == [[1, 3], [0, 1]] and found.correct == 2
