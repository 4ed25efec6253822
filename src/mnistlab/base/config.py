"""One frozen configuration for a training run, and the named recipes.

Every training option is a field of `Config`, with its help text beside it; a
recipe is a named preset of those fields, and command-line flags override
single fields of a recipe. The resolved config is saved once per run, in
`config.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from . import names
from .devices import DEVICE_CHOICES, DEVICE_NAME
from .errors import UsageError

ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid")
DATASET_NAMES = names.KNOWN
MAX_WIDTH = 65536  # units per hidden layer: far beyond what MNIST needs, far below running out of memory
MAX_WEIGHTS = 100_000_000  # an MLP's weights: 400 MB of float32, and as much again for gradients and momentum
MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer
MAX_ENSEMBLE = 1024  # networks in one ensemble checkpoint
MAX_LR = 3.4e38  # the largest float32: torch's optimisers take the rate as one (a larger one is an overflow)


class ConfigError(UsageError):
    """A configuration value out of range or of the wrong type."""


def _opt(default: Any, help: str, choices: tuple[str, ...] = ()) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Config:
    """Everything a training run depends on (paths and output options are not here)."""

    recipe: str = _opt("default", "the recipe these values started from")
    dataset: str = _opt("mnist", f"dataset to train on: {', '.join(DATASET_NAMES)}, or your own data as "
                        f"{names.SYNTAX} (see docs/data.md)")
    model: str = _opt("mlp", "mlp (the notebook's network) or cnn", ("mlp", "cnn"))
    hidden: tuple[int, ...] = _opt((128, 64), "hidden layer sizes of the mlp, e.g. --hidden 128 64")
    activation: str = _opt("relu", "activation after each hidden layer", ACTIVATIONS)
    output: str = _opt("logits", "logits (CrossEntropyLoss) or log_softmax (NLLLoss)", ("logits", "log_softmax"))
    epochs: int = _opt(10, "passes over the training data")
    batch_size: int = _opt(64, "images per training step")
    optimizer: str = _opt("sgd", "sgd or adamw", ("sgd", "adamw"))
    lr: float = _opt(0.003, "learning rate (the peak rate with onecycle)")
    momentum: float = _opt(0.0, "SGD momentum (0: plain SGD, as in the notebook)")
    nesterov: bool = _opt(False, "Nesterov momentum (SGD with momentum only)")
    weight_decay: float = _opt(0.0, "L2 weight decay")
    schedule: str = _opt("constant", "constant, or onecycle (linear warm-up, then linear decay to 0)",
                         ("constant", "onecycle"))
    warmup: float = _opt(0.0, "fraction of all steps spent warming up (onecycle)")
    label_smoothing: float = _opt(0.0, "label smoothing of the cross-entropy (logits output only)")
    shift: int = _opt(0, "random translation of each training image, up to this many pixels")
    drop_last: bool = _opt(False, "drop the last partial batch of each epoch (the notebook keeps it)")
    mean: float = _opt(0.5, "normalisation: x = (x/255 - mean) / std")
    std: float = _opt(0.5, "normalisation: x = (x/255 - mean) / std")
    val_size: int = _opt(0, "hold out this many training images for validation (0: none)")
    train_size: int = _opt(0, "train on the first N training images only (0: all)")
    seed: int = _opt(0, "seed of the initial weights, the batch order and the shifts")
    data_seed: int = _opt(-1, "seed of the validation split, the batch order and the shifts instead of --seed "
                          "(-1: --seed's); the members of a batched sweep group share their group's")
    ensemble: int = _opt(1, "train this many networks at once (seeds --seed, --seed+1, ...) and save them as one "
                         "model that averages their probabilities")
    device: str = _opt("auto", "auto, cpu, cuda, cuda:N or mps")
    cuda_graph: bool = _opt(True, "capture the training step as a CUDA graph on CUDA")
    eval_every_epoch: bool = _opt(True, "measure test accuracy after every epoch (else at the end only)")
    target_accuracy: float = _opt(0.0, "stop at the first epoch whose validation accuracy (the test accuracy "
                                  "without --val-size) reaches this, e.g. 0.98; the summary records the time to "
                                  "reach it (0: train every epoch)")
    skip_bad: bool = _opt(False, "folder and CSV datasets: go on without the files (or rows) that cannot be "
                          "read, instead of stopping")

    def __post_init__(self) -> None:
        # Your own data is named by its absolute path, so config.json says where it came from.
        if isinstance(self.dataset, str):
            object.__setattr__(self, "dataset", names.canonical(self.dataset))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "Config":
        """A config from its JSON form, checked key by key (ConfigError names the first bad one)."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object of fields, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)}, key=str)
        if unknown:
            # repr for a key with a newline in it: the message stays one line
            shown = (k if isinstance(k, str) and k.isprintable() else repr(k) for k in unknown)
            raise ConfigError(f"unknown config keys: {', '.join(shown)}")
        hints = typing.get_type_hints(cls)
        values = {}
        for name, value in d.items():
            values[name] = _typed(name, value, hints[name])
        return cls(**values).validated()

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes).validated()

    def differences(self, other: "Config") -> dict[str, Any]:
        """The fields whose values differ from `other`'s, with this config's values."""
        mine, theirs = self.to_dict(), other.to_dict()
        return {k: v for k, v in mine.items() if v != theirs[k] and k != "recipe"}

    def validated(self) -> "Config":
        """Return self, or raise ConfigError naming the first bad value and its allowed range."""
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            _typed(f.name, getattr(self, f.name), hints[f.name])
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)} (got {getattr(self, f.name)!r})")
        problem = names.problem(self.dataset)
        if problem:
            raise ConfigError(problem)
        if not DEVICE_NAME.fullmatch(self.device):
            raise ConfigError(f"device must be {DEVICE_CHOICES} (got {self.device!r})")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        for name in ("val_size", "train_size", "shift"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.shift > 8:
            raise ConfigError(f"shift must be at most 8 pixels of the 28 (got {self.shift})")
        if not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be in [0, 2**63-1] (got {self.seed})")
        if not -1 <= self.data_seed <= MAX_SEED:
            raise ConfigError(f"data_seed must be -1 (the seed's) or in [0, 2**63-1] (got {self.data_seed})")
        if not 1 <= self.ensemble <= MAX_ENSEMBLE or self.seed + self.ensemble - 1 > MAX_SEED:
            raise ConfigError(f"ensemble must be 1 to {MAX_ENSEMBLE} networks whose seeds stay below 2**63 "
                              f"(got {self.ensemble} from seed {self.seed})")
        check_lr(self.lr)
        if not 0 < self.std <= 1000:
            raise ConfigError(f"std must be > 0 and at most 1000 (got {self.std})")
        if not -1000 <= self.mean <= 1000:
            raise ConfigError(f"mean must be in [-1000, 1000] (got {self.mean})")
        if not 0 <= self.weight_decay < 1:
            raise ConfigError(f"weight_decay must be in [0, 1) (got {self.weight_decay})")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1) (got {self.momentum})")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        if not 0 <= self.target_accuracy <= 1:
            raise ConfigError(f"target_accuracy must be in [0, 1] (got {self.target_accuracy})")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup must be in [0, 1) (got {self.warmup})")
        if not self.hidden or any(not 1 <= h <= MAX_WIDTH for h in self.hidden) or len(self.hidden) > 16:
            raise ConfigError(f"hidden sizes must be 1 to 16 integers from 1 to {MAX_WIDTH} (got {list(self.hidden)})")
        sizes = [28 * 28, *self.hidden, 10]
        weights = sum(a * b for a, b in zip(sizes, sizes[1:]))
        if self.model == "mlp" and weights > MAX_WEIGHTS:
            raise ConfigError(f"hidden sizes {list(self.hidden)} make {weights:,} weights; at most {MAX_WEIGHTS:,} "
                              "fit in memory comfortably (the notebook's network has 109,184)")
        if self.model == "cnn" and self.hidden != Config.hidden:
            raise ConfigError(f"hidden sizes apply to the mlp; the cnn has its own layers (3 conv blocks of 32, 64 and "
                              f"128 channels), so drop hidden {list(self.hidden)}")
        if self.output == "log_softmax" and self.label_smoothing:
            raise ConfigError("label_smoothing needs output=logits (NLLLoss has no smoothing)")
        return self

    def order_seed(self) -> int:
        """The seed of the validation split, the batch order and the shifts."""
        return self.seed if self.data_seed < 0 else self.data_seed

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def check_lr(lr: float) -> float:
    """`lr` if it is a learning rate torch can take, else ConfigError."""
    if not 0 < lr <= MAX_LR:
        raise ConfigError(f"lr must be > 0 and at most {MAX_LR:g}, the largest float32 (got {lr})")
    return lr


def _typed(name: str, value: Any, kind: Any) -> Any:
    """`value` if it has the field's type (ints accepted for floats; numbers finite), else ConfigError."""
    if typing.get_origin(kind) is tuple:
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return tuple(value)
        raise ConfigError(f"{name} must be a list of integers (got {value!r})")
    if kind is bool:
        ok = isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ConfigError(f"{name} must be {'a finite number' if kind is float else kind.__name__} (got {value!r})")
    return float(value) if kind is float else value


RECIPES: dict[str, Config] = {
    # The course notebook, verbatim.
    "seed": Config(
        recipe="seed", output="log_softmax", epochs=5, batch_size=64,
        optimizer="sgd", lr=0.003,
    ),
    # The same network trained well: momentum SGD, one-cycle schedule,
    # label smoothing and 1-pixel shifts done on the device.
    "default": Config(
        recipe="default", epochs=10, batch_size=128, optimizer="sgd", lr=0.1,
        momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="onecycle",
        warmup=0.15, label_smoothing=0.1, shift=1,
    ),
    # Least wall time to >= 98% with the same architecture.
    "fast": Config(
        recipe="fast", epochs=6, batch_size=256, optimizer="sgd", lr=0.1,
        momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="onecycle",
        warmup=0.2, label_smoothing=0.1, shift=1, drop_last=True,
        eval_every_epoch=False,
    ),
    # A small convnet for the best accuracy.
    "cnn": Config(
        recipe="cnn", model="cnn", epochs=6, batch_size=128, optimizer="sgd",
        lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4,
        schedule="onecycle", warmup=0.15, label_smoothing=0.1, shift=2,
    ),
}

# What each recipe gives, as measured for the table of docs/recipes.md (benchmarks/readme_numbers.sh,
# `mnistlab train --recipe NAME`, seed 0, MNIST). `mnistlab recipes` shows it; a test keeps
# that table and these numbers the same.
MEASURED: dict[str, Any] = {
    "machine": "2-core development VM (AMD EPYC, 2 threads, CPU only), torch 2.13.0+cpu, MNIST, seed 0, 2026-11-27",
    "seed": {"summary": "the course notebook verbatim", "test_accuracy": 0.8951, "train_time": "3.2-5.7 s"},
    "default": {"summary": "the same network trained well", "test_accuracy": 0.9861, "train_time": "8.0-8.7 s"},
    "fast": {"summary": "least time to 98%", "test_accuracy": 0.9821, "train_time": "2.7-4.8 s"},
    "cnn": {"summary": "a small convnet, best accuracy", "test_accuracy": 0.9949, "train_time": "195 s"},
}


def recipe_line(config: Config, lang: str = "en") -> str:
    """`recipe fast, with lr 0.2, epochs 3`: the recipe and what differs from it (`lang` fr: `recette ...`)."""
    base = RECIPES.get(config.recipe)
    changed = config.differences(base) if base else {}
    shown = ", ".join(f"{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in changed.items())
    recipe_word, with_word = ("recette", "avec") if lang == "fr" else ("recipe", "with")
    return f"{recipe_word} {config.recipe}" + (f", {with_word} {shown}" if shown else "")


def recipe(name: str, **overrides: Any) -> Config:
    """The named recipe with some fields replaced, validated."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name].replace(**overrides)
