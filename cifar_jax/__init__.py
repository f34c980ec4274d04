"""cifar_jax: the Keras CIFAR-10 tutorial's MLP and CNN in JAX/Flax, fast."""

from cifar_jax.config import Config
from cifar_jax.data import CLASS_NAMES
from cifar_jax.models import CNN, MLP

__all__ = ["CLASS_NAMES", "CNN", "MLP", "Config"]
