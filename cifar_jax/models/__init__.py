"""The networks, by name. A new model is one module here plus one entry in `MODELS` (and its
recipe in `config.RECIPES`).

Every model is a Flax module called as `model.apply(variables, images, train=...)` on float
images in [0, 1] of shape [B, 32, 32, 3], returning float32 logits [B, 10]; models with
BatchNorm keep its running statistics in the `batch_stats` collection, and dropout would draw
from the "dropout" RNG stream.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp

from cifar_jax import ops
from cifar_jax.models.airbench import AirbenchNet, init_whitening
from cifar_jax.models.tutorial import CNN, MLP


class ModelEntry(NamedTuple):
    build: Callable  # dtype -> the Flax module; the convolution is chosen here, once, per backend
    init_from_data: Callable | None = None  # (variables, train images uint8) -> variables


MODELS = {
    "mlp": ModelEntry(lambda dtype: MLP(dtype=dtype)),
    "cnn": ModelEntry(lambda dtype: CNN(dtype=dtype, conv=ops.default_conv())),
    # The whitening stem's filters come from the first 5,000 training images.
    "airbench94": ModelEntry(lambda dtype: AirbenchNet(dtype=dtype, conv=ops.default_conv()),
                             lambda variables, images: init_whitening(variables, images[:5000])),
}


def build(name, dtype="float32"):
    """The Flax module registered as `name`, computing in `dtype` ('float32' or 'bfloat16')."""
    return MODELS[name].build(jnp.dtype(dtype))


__all__ = ["CNN", "MLP", "MODELS", "AirbenchNet", "build"]
