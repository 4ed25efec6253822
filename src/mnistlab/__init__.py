"""mnistlab: train, understand and use small image classifiers on MNIST-family data.

The public API is loaded lazily so that `import mnistlab` stays instant.
"""

__version__ = "0.1.0"

_API = {
    "Config": "config", "recipe": "config", "RECIPES": "config",
    "load": "data", "DATASETS": "data",
    "build_model": "models",
    "train": "training", "resume": "training",
    "evaluate": "evaluation", "load_checkpoint": "checkpoint",
    "predict": "prediction", "prepare_image": "prepare",
    "view_classify": "figures",
    "inspect_step": "inspection",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f"mnistlab.{_API[name]}"), name)
    raise AttributeError(f"module 'mnistlab' has no attribute {name!r}")
