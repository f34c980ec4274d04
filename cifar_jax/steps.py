"""The optimisers, the pure train and eval steps, and the compiled loops that run them over batches."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from cifar_jax.data import IMAGE_SHAPE, to_float

OPTIMIZERS = {"sgd": optax.sgd, "adam": optax.adam}  # name -> optax factory taking the learning rate


def create_train_state(model, optimizer, learning_rate, rng):
    params = model.init(rng, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32))
    tx = OPTIMIZERS[optimizer](learning_rate)
    return train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)


def _metrics(logits, losses, batch):
    """Sums over the real (mask 1) examples of a batch; divide by `count` to average."""
    mask = batch["mask"]
    return {"loss_sum": (losses * mask).sum(),
            "correct": ((logits.argmax(-1) == batch["label"]) * mask).sum(),
            "count": mask.sum()}


def train_step(state, batch):
    """One optimiser step on `batch` = {image uint8 [B,32,32,3], label [B], mask [B]}.

    The loss is the mean sparse categorical cross-entropy over the real examples, so a padded
    partial batch trains exactly as Keras trains its short last batch.
    """
    def loss_fn(params):
        logits = state.apply_fn(params, to_float(batch["image"]))
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return (losses * batch["mask"]).sum() / batch["mask"].sum(), (logits, losses)

    (_, (logits, losses)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads), _metrics(logits, losses, batch)


def eval_step(state, batch):
    """Metric sums and predicted classes for one batch, parameters unchanged."""
    logits = state.apply_fn(state.params, to_float(batch["image"]))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return _metrics(logits, losses, batch), logits.argmax(-1)


def _gather(images, labels, idx, mask):
    return {"image": images[idx], "label": labels[idx], "mask": mask}


@functools.partial(jax.jit, donate_argnums=0)
def train_batches(state, images, labels, idx, mask):
    """`train_step` over the batches `images[idx[k]]`, k = 0.. as one compiled `lax.scan`.

    The data stays on the device and no Python runs between steps. Returns the new state and
    the per-step metrics stacked along a leading axis.
    """
    def body(state, batch_idx):
        return train_step(state, _gather(images, labels, *batch_idx))

    return jax.lax.scan(body, state, (idx, mask))


@jax.jit
def eval_batches(state, images, labels, idx, mask):
    """`eval_step` over the batches `images[idx[k]]`: stacked metric sums and predictions."""
    def body(carry, batch_idx):
        return carry, eval_step(state, _gather(images, labels, *batch_idx))

    return jax.lax.scan(body, None, (idx, mask))[1]


def summarise(metrics):
    """Per-step metric sums (a stacked dict, or a list of them) -> {"loss", "accuracy"} floats."""
    chunks = jax.device_get(metrics if isinstance(metrics, list) else [metrics])
    totals = {key: sum(float(np.sum(chunk[key], dtype=np.float64)) for chunk in chunks)
              for key in chunks[0]}
    return {"loss": totals["loss_sum"] / totals["count"],
            "accuracy": totals["correct"] / totals["count"]}
