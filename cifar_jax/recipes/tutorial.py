"""The Keras tutorial's two recipes: its MLP trained with SGD for 5 epochs, its CNN with Adam for
10, batch 32, the mean cross-entropy (Keras's parity details: docs/training.md, "Keras parity
of the tutorial models").
"""

from cifar_jax import register_model, register_optimizer
from cifar_jax.models.tutorial import CNN, MLP
from cifar_jax.optim.tutorial import adam, sgd

register_optimizer("sgd", sgd)
register_optimizer("adam", adam)
register_model("mlp", MLP, optimizer="sgd", epochs=5)
# The CNN convolves with Flax's own convolution; the steps compute it as a matmul on the CPU
# (`ops.for_backend`), as they do any model's.
register_model("cnn", CNN, optimizer="adam", epochs=10)
