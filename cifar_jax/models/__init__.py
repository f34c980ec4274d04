"""The networks: plain Flax modules, one file per family, with no training logic. Which name
trains which network, with which recipe, is for `cifar_jax/recipes/` (and the user's own
`register_model` calls) to say; `build` turns a name into a module.

Every model is a Flax module called as `model.apply(variables, images, train=...)` on float
images in [0, 1] of shape [B, 32, 32, 3], returning float32 logits [B, 10]; models with
BatchNorm keep its running statistics in the `batch_stats` collection, and dropout draws from
the "dropout" RNG stream. A module may define `init_from_data(variables, images)`, which a
fresh state applies once to the uint8 training images. A Flax NNX module class trains as one
through Flax's bridge (`from_nnx.py`).
"""

import sys

import jax.numpy as jnp

from cifar_jax.models.airbench import AirbenchNet
from cifar_jax.models.tutorial import CNN, MLP
from cifar_jax.registry import call, lookup, parameters


def build(name, dtype="float32", settings=None):
    """The module that the model registered as `name` (or the import path `name`) builds,
    computing in `dtype` ('float32' or 'bfloat16') where it takes a dtype, with its
    `settings` ({attribute: value}): given to the class or the build function where its
    signature names them, the rest set on the module it builds (`Module.clone`)."""
    build_ = lookup("model", name).obj
    if _is_nnx_class(build_):
        from cifar_jax.models import from_nnx  # here: a Linen run never imports flax.nnx

        build_ = from_nnx.builder(build_)
    settings = dict(settings or {})
    keywords = parameters(build_)
    module = call(build_, dtype=jnp.dtype(dtype),
                  **{k: v for k, v in settings.items() if k in keywords})
    rest = {k: v for k, v in settings.items() if k not in keywords}
    return module.clone(**rest) if rest else module


def _is_nnx_class(obj):
    nnx = sys.modules.get("flax.nnx")  # imported by the module that defines an NNX model
    return nnx is not None and isinstance(obj, type) and issubclass(obj, nnx.Module)


__all__ = ["CNN", "MLP", "AirbenchNet", "build"]
