"""cifar_jax: train CIFAR-10 classifiers with JAX/Flax, fast.

Bring your own model, optimiser, augmentation or loss without editing the package: register it
(`register_model("tiny", Tiny, optimizer="adam", epochs=1)` and its siblings) or name it by
import path on the command line (`--model mynets:ResNet8`); its keyword parameters are its
settings (`--model.width 64`). The contracts are in `cifar_jax.registry.CONTRACTS`.
"""

import importlib

from cifar_jax.config import Config
from cifar_jax.registry import (
    register_augmentation,
    register_loss,
    register_model,
    register_optimizer,
)

__all__ = ["CLASS_NAMES", "CNN", "MLP", "Config", "register_augmentation", "register_loss",
           "register_model", "register_optimizer", "train_and_evaluate"]

# Imported on first use: the training loop brings Orbax and TensorBoard's writer along.
_LAZY = {"CLASS_NAMES": "cifar_jax.data", "CNN": "cifar_jax.models", "MLP": "cifar_jax.models",
         "train_and_evaluate": "cifar_jax.train"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cifar_jax' has no attribute {name!r}")
