"""The Keras tutorial's optimisers, Keras's defaults: SGD for its MLP, Adam for its CNN."""

import optax


def sgd(learning_rate=0.01, momentum=None):
    """Keras's SGD: learning rate 0.01, no momentum unless --momentum says."""
    return optax.sgd(learning_rate, momentum)


def adam(learning_rate=1e-3):
    """Keras's Adam, at its default learning rate."""
    return optax.adam(learning_rate)
