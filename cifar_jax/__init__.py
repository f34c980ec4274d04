"""cifar_jax: train CIFAR-10 classifiers with JAX/Flax, fast."""

import importlib

from cifar_jax.config import Config

# Imported on first use, so that `import cifar_jax.config` (and the command lines' --help)
# do not start JAX.
_LAZY = {"CLASS_NAMES": "cifar_jax.data", "CNN": "cifar_jax.models", "MLP": "cifar_jax.models"}

__all__ = ["CLASS_NAMES", "CNN", "MLP", "Config"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cifar_jax' has no attribute {name!r}")
