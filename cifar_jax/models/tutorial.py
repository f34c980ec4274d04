"""The Keras tutorial's two classifiers as plain Flax modules.

Keras parity: kernels start glorot_uniform, biases zero, convolutions pad 'VALID'. Both
return float32 logits; apply `jax.nn.softmax` where probabilities are wanted. `dtype` is the
computation dtype (bfloat16 for mixed precision); parameters stay float32.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from cifar_jax.ops import crop_for_pool, max_pool_2x2

glorot_uniform = nn.initializers.glorot_uniform()


class MLP(nn.Module):
    """Flatten -> Dense(3000, relu) -> Dense(1000, relu) -> Dense(10): 12,230,010 parameters."""

    hidden: tuple[int, ...] = (3000, 1000)
    num_classes: int = 10
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.relu(nn.Dense(width, kernel_init=glorot_uniform, dtype=self.dtype)(x))
        x = nn.Dense(self.num_classes, kernel_init=glorot_uniform, dtype=self.dtype)(x)
        return x.astype(jnp.float32)


class CNN(nn.Module):
    """[Conv(32, 3x3) -> pool] -> [Conv(64, 3x3) -> pool] -> Dense(64) -> Dense(10): 167,562 parameters."""

    features: tuple[int, ...] = (32, 64)
    dense: int = 64
    num_classes: int = 10
    dtype: Any = jnp.float32
    # How nn.Conv convolves: XLA's convolution, which the steps compute as a matmul on the CPU
    # (`ops.for_backend`); another one of the same signature may take its place.
    conv: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x, train: bool = False):
        for f in self.features:  # crop_for_pool: skip the conv outputs that the pool drops
            x = nn.Conv(f, (3, 3), padding="VALID", kernel_init=glorot_uniform, dtype=self.dtype,
                        conv_general_dilated=self.conv)(crop_for_pool(x, 3))
            x = max_pool_2x2(nn.relu(x))
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(self.dense, kernel_init=glorot_uniform, dtype=self.dtype)(x))
        x = nn.Dense(self.num_classes, kernel_init=glorot_uniform, dtype=self.dtype)(x)
        return x.astype(jnp.float32)
