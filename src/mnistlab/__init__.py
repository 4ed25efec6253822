"""mnistlab: train, understand and use small image classifiers on MNIST-family data.

The public API is loaded lazily so that `import mnistlab` stays instant.
"""

import importlib

__version__ = "0.1.0"

_API = {
    "Config": "base.config", "recipe": "base.config", "RECIPES": "base.config",
    "load": "base.data", "DATASETS": "base.data",
    "build_model": "base.models",
    "train": "core.engine", "resume": "core.engine",
    "evaluate": "core.evaluation", "load_checkpoint": "core.checkpoint",
    "predict": "commands.prediction", "prepare_image": "base.prepare",
    "view_classify": "commands.figures", "plot_run": "commands.figures",
    "inspect_step": "commands.inspection",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        return getattr(importlib.import_module(f"mnistlab.{_API[name]}"), name)
    raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")
