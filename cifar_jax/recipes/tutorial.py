"""The Keras tutorial's two recipes: its MLP trained with SGD for 5 epochs, its CNN with Adam for
10, batch 32, the mean cross-entropy (Keras's parity details: README, "Using it as a library").
"""

import optax

from cifar_jax import register_model, register_optimizer
from cifar_jax.models.tutorial import CNN, MLP


def sgd(learning_rate=0.01, momentum=None):
    """Keras's SGD: learning rate 0.01, no momentum unless --momentum says."""
    return optax.sgd(learning_rate, momentum)


def adam(learning_rate=1e-3):
    """Keras's Adam, at its default learning rate."""
    return optax.adam(learning_rate)


register_optimizer("sgd", sgd)
register_optimizer("adam", adam)
register_model("mlp", MLP, optimizer="sgd", epochs=5)
# The CNN convolves with Flax's own convolution; the steps compute it as a matmul on the CPU
# (`ops.for_backend`), as they do any model's.
register_model("cnn", CNN, optimizer="adam", epochs=10)
