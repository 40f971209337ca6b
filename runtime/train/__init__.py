"""Training: configuration, optimizers, schedules and checkpoints for nnspec models.

`config` (the `train:` section: `TrainSpec`, `validate_train`, `train_schema`) imports no torch, so
`nnspec schema` and the spec loader can use it cheaply; `build_optimizer`, `clip_gradients`
(optim.py) and `build_schedule` (schedules.py) import torch when first used.
"""
from .config import TrainSpec, train_schema, validate_train

_TORCH = {"build_optimizer": "optim", "clip_gradients": "optim", "build_schedule": "schedules"}


def __getattr__(name):
    # the torch-backed functions load on first use: `from nnspec.runtime.train import config` stays torch-free
    if name in _TORCH:
        from importlib import import_module
        return getattr(import_module(f".{_TORCH[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["TrainSpec", "build_optimizer", "build_schedule", "clip_gradients", "train_schema", "validate_train"]
