"""Config: a frozen dataclass, recipes are presets of it, bad values are named."""

import dataclasses

import pytest

from mnistlab.config import RECIPES, Config, recipe


def test_seed_recipe_is_the_notebook():
    c = RECIPES["seed"]
    assert (c.batch_size, c.optimizer, c.lr, c.momentum, c.epochs, c.output) == (64, "sgd", 0.003, 0.0, 5, "log_softmax")
    assert (c.mean, c.std, c.hidden, c.activation, c.model) == (0.5, 0.5, (128, 64), "relu", "mlp")
    assert c.schedule == "constant" and c.shift == 0 and not c.drop_last


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RECIPES["seed"].lr = 1.0  # type: ignore[misc]


def test_overrides_replace_single_fields():
    c = recipe("seed", lr=0.1, epochs=2)
    assert (c.lr, c.epochs, c.batch_size) == (0.1, 2, 64)


def test_round_trip_through_dict():
    c = recipe("default", hidden=(32, 16))
    assert Config.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("change, message", [
    ({"lr": 0}, "lr"), ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"),
    ({"optimizer": "lbfgs"}, "optimizer"), ({"device": "tpu"}, "device"), ({"momentum": 1.5}, "momentum"),
    ({"hidden": ()}, "hidden"), ({"val_size": -1}, "val_size"),
])
def test_bad_values_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        recipe("seed", **change)


def test_unknown_recipe_and_keys():
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe("nope")
    with pytest.raises(ValueError, match="unknown config keys: bogus"):
        Config.from_dict({"bogus": 1})
