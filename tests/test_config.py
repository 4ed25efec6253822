"""Config: a frozen dataclass, recipes are presets of it, bad values are named."""

import dataclasses

import pytest

from mnistlab.base.config import RECIPES, Config, ConfigError, recipe


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
    ({"weight_decay": -1}, "weight_decay"), ({"weight_decay": float("nan")}, "weight_decay"),
    ({"seed": 2**70}, "seed"), ({"hidden": (100_000_000,)}, "hidden"), ({"std": float("inf")}, "std"),
    ({"hidden": (65536,) * 16}, "weights; at most"),
    ({"data_seed": -2}, "data_seed"), ({"ensemble": 0}, "ensemble"), ({"seed": 2**63 - 1, "ensemble": 2}, "ensemble"),
    ({"mean": float("nan")}, "mean"), ({"std": 0}, "std"), ({"lr": "0.1"}, "lr"), ({"epochs": 2.5}, "epochs"),
])
def test_bad_values_are_named(change, message):
    with pytest.raises(ConfigError, match=message):
        recipe("seed", **change)


def test_unknown_recipe_and_keys():
    with pytest.raises(ConfigError, match="unknown recipe"):
        recipe("nope")
    with pytest.raises(ConfigError, match="unknown config keys: bogus"):
        Config.from_dict({"bogus": 1})


@pytest.mark.parametrize("document, message", [
    ([], "JSON object"), ({"lr": "fast"}, "lr must be a finite number"), ({"hidden": [1.5]}, "hidden"),
    ({"nesterov": 1}, "nesterov must be bool"), ({"dataset": 3}, "dataset must be str"),
])
def test_a_config_document_of_the_wrong_shape_is_named_not_trusted(document, message):
    with pytest.raises(ConfigError, match=message):
        Config.from_dict(document)


def test_differences_list_only_the_changed_fields():
    assert recipe("fast", lr=0.2, epochs=3).differences(RECIPES["fast"]) == {"lr": 0.2, "epochs": 3}
