"""PyTorch's SGD step and parameter groups, from Optax pieces: what the ports of PyTorch
recipes (airbench94's Nesterov, Muon's SGD groups) build on."""

import optax


def key_name(key):
    """One component of a JAX key path (DictKey, GetAttrKey, SequenceKey...) as a string."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def torch_sgd(learning_rate, decay_coefficient, momentum):
    """PyTorch's `SGD(lr, momentum, weight_decay, nesterov=True)` step, from Optax pieces.

    Torch computes, per parameter: `g = grad + wd * p`; `buf = momentum * buf + g` (`buf = g`
    at the first step); `g = g + momentum * buf`; `p -= lr_t * g`. The chain below does those
    in the same order: `add_decayed_weights` is the coupled decay (added to the gradient
    *before* momentum, as torch does, not AdamW-style decoupled decay: the recipe's wd/lr
    coefficients were tuned for this form); `optax.trace` starts from a zero buffer, so its
    first buffer is `g` as torch's, and its Nesterov output is `g + momentum * buf`, torch's;
    `scale_by_learning_rate` multiplies by `-learning_rate(count)`.
    """
    return optax.chain(
        optax.add_decayed_weights(decay_coefficient),
        optax.trace(decay=momentum, nesterov=True),
        optax.scale_by_learning_rate(learning_rate),
    )


# `partition` is Optax's current name for `multi_transform` (kept as an alias).
partition = getattr(optax, "partition", None) or optax.multi_transform
