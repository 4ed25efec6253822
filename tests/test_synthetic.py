"""The built-in synthetic dataset: MNIST-shaped, MNIST-looking, learnable and reproducible."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from mnistlab.base import data, synthetic
from mnistlab.base.synthetic import generate

N_TRAIN, N_TEST = 500, 100


@pytest.fixture(scope="module")
def small() -> dict[str, np.ndarray]:
    return generate(N_TRAIN, N_TEST, seed=0)


def test_shapes_and_dtypes(small):
    assert small["train_images"].shape == (N_TRAIN, 28, 28)
    assert small["test_images"].shape == (N_TEST, 28, 28)
    assert small["train_labels"].shape == (N_TRAIN,)
    assert small["test_labels"].shape == (N_TEST,)
    assert all(array.dtype == np.uint8 for array in small.values())


def test_same_seed_gives_identical_arrays_and_another_seed_does_not(small):
    again = generate(N_TRAIN, N_TEST, seed=0)
    other = generate(N_TRAIN, N_TEST, seed=1)
    for key in small:
        np.testing.assert_array_equal(small[key], again[key])
    assert not np.array_equal(small["train_images"], other["train_images"])
    assert not np.array_equal(small["test_images"], other["test_images"])


def test_labels_are_balanced_digits(small):
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        counts = np.bincount(small[f"{split}_labels"], minlength=10)
        assert len(counts) == 10  # nothing above 9
        assert counts.min() == counts.max() == n // 10
    # Shuffled, not sorted by class.
    assert not np.all(np.diff(small["train_labels"].astype(int)) >= 0)


def test_images_are_light_digits_on_black_centred_like_mnist(small):
    images = small["train_images"].astype(np.float64)
    assert images.max(axis=(1, 2)).min() >= 200  # every image has bright ink
    assert (images == 0).mean(axis=(1, 2)).min() > 0.5  # and is mostly exact black
    ink = (images > 0).mean()
    assert 0.08 < ink < 0.35  # MNIST: about 19% of pixels are non-zero
    # Centre of mass near the image centre (MNIST centres by it), ink mostly inside.
    rows = np.arange(28)
    mass = images.sum(axis=(1, 2))
    com_y = (images.sum(axis=2) * rows).sum(axis=1) / mass
    com_x = (images.sum(axis=1) * rows).sum(axis=1) / mass
    assert np.abs(com_y - 13.5).mean() < 1.5 and np.abs(com_x - 13.5).mean() < 1.5
    border = np.ones((28, 28), dtype=bool)
    border[3:-3, 3:-3] = False
    assert images[:, border].sum() < 0.05 * images.sum()


def test_train_and_test_are_different_draws(small):
    train = {image.tobytes() for image in small["train_images"]}
    assert not any(image.tobytes() in train for image in small["test_images"])
    # The test split has its own random stream: it does not depend on the train size.
    np.testing.assert_array_equal(generate(50, N_TEST)["test_images"], small["test_images"])


def test_classes_are_learnable_by_nearest_class_mean(small):
    """Even the simplest classifier beats chance (10%) by far: the labels match the pictures."""
    x = small["train_images"].reshape(N_TRAIN, -1) / 255
    means = np.stack([x[small["train_labels"] == k].mean(axis=0) for k in range(10)])
    test = small["test_images"].reshape(N_TEST, -1) / 255
    predicted = ((test[:, None, :] - means[None]) ** 2).sum(axis=2).argmin(axis=1)
    assert (predicted == small["test_labels"]).mean() > 0.4


def test_glyph_bank_holds_every_digit_font_and_stroke():
    bank = synthetic.glyph_bank()
    size = synthetic.SIZE * synthetic.OVERSAMPLE
    # Every font of the list that this matplotlib ships (3.10 has no cmti10.ttf; 3.11 has all 12).
    shipped = [name for name in synthetic.FONTS if (synthetic.font_dir() / name).is_file()]
    assert len(shipped) >= 11
    assert bank.shape == (10, len(shipped), len(synthetic.STROKES), size, size)
    assert (bank.flatten(3).amax(dim=3) > 0.5).all()  # no empty glyph (a font without digits)
    # Thicker strokes mean more ink, glyph by glyph.
    ink = bank.sum(dim=(3, 4))
    assert (ink[:, :, 1:] > ink[:, :, :-1]).all()


def test_load_synthetic_gives_a_dataset(monkeypatch):
    # load() generates the full 60,000 + 10,000; a smaller draw tests the same wiring faster.
    monkeypatch.setattr(data, "generate", functools.partial(generate, 200, 100))
    ds = data.load("synthetic")
    assert ds.classes == tuple(str(d) for d in range(10))
    assert tuple(ds.train.images.shape) == (200, 28, 28) and len(ds.test) == 100
    assert str(ds.train.images.dtype) == "torch.uint8" and str(ds.train.labels.dtype) == "torch.int64"
    np.testing.assert_array_equal(ds.test.labels.numpy(), generate(200, 100)["test_labels"])


def test_load_synthetic_refuses_a_data_dir(tmp_path):
    with pytest.raises(data.DataError, match="synthetic"):
        data.load("synthetic", data_dir=tmp_path)
