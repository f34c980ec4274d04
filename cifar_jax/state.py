"""The train state: trainable parameters, model state (BatchNorm statistics), optimiser state,
the lookahead average and the step, as one pytree that jit donates, Orbax saves and vmap can
batch; and building a fresh one from a run's config."""

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from cifar_jax import models, optim
from cifar_jax.data import IMAGE_SHAPE
from cifar_jax.steps import StepRecipe

DEFAULT_RECIPE = StepRecipe()


class TrainState(struct.PyTreeNode):
    """`params` are what the optimiser updates; `batch_stats` are what the model updates itself
    in training (BatchNorm's running statistics; {} for models without any); `ema` is the
    lookahead average of both ({} without lookahead). `recipe` says how a step trains."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    ema: Any
    apply_fn: Callable = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    recipe: StepRecipe = struct.field(pytree_node=False, default=DEFAULT_RECIPE)

    @property
    def variables(self):
        """The Flax variables the model is applied to."""
        return {"params": self.params, "batch_stats": self.batch_stats}

    def apply_gradients(self, grads, batch_stats):
        """One optimiser step on `params`; `batch_stats` replace the old ones untouched by it."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)


# Compiled, the model's init is one program; run op by op, as `model.init` alone is, each of its
# operations compiles apart, which took seconds on a CPU (the same values either way). The
# model is static: equal modules share the compiled init.
@functools.partial(jax.jit, static_argnums=0)
def _init_variables(model, rng):
    return model.init(rng, jnp.zeros((1, *IMAGE_SHAPE), jnp.float32), train=False)


def create(model, tx, rng, recipe=DEFAULT_RECIPE, init_from_data=None, images=None):
    """A fresh state: `model` initialised from `rng` on one image (then by `init_from_data`
    from the training `images`, when both are given), and `tx`'s state for its params."""
    variables = _init_variables(model, rng)
    if init_from_data is not None and images is not None:
        variables = init_from_data(variables, images)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    # A copy, not the same buffers: jit donates the whole state, and a buffer can go only once.
    ema = (jax.tree.map(jnp.copy, {"params": params, "batch_stats": batch_stats})
           if recipe.lookahead_steps else {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=jax.jit(tx.init)(params), ema=ema, apply_fn=model.apply, tx=tx,
                      recipe=recipe)


def is_stacked(state):
    """Whether `state` holds N models along a leading axis (a multi-seed run)."""
    return state.step.ndim > 0


def steps_done(state):
    """The optimiser steps taken (by each model alike, in a stacked state)."""
    return int(jax.device_get(state.step).flat[0])


def member(state, i):
    """Model `i` of a stacked state, as a plain one."""
    return jax.tree.map(lambda leaf: leaf[i], state)


def run_length(config, n_train):
    """(steps per epoch, steps in the whole run) of `config` over `n_train` training images."""
    per_epoch = n_train // config.batch_size if config.drop_last else -(-n_train // config.batch_size)
    return per_epoch, math.ceil(per_epoch * config.epochs)


def optimizer(config, n_train):
    """(optax transformation, learning rate at step s) of `config`'s recipe."""
    per_epoch, total = run_length(config, n_train)
    return optim.make(config.optimizer, config.learning_rate, total_steps=total,
                      schedule=config.schedule, momentum=config.momentum,
                      weight_decay=config.weight_decay, batch_size=config.batch_size,
                      bias_scaler=config.bias_scaler,
                      whiten_bias_steps=round(config.whiten_bias_epochs * per_epoch))


def from_config(config, rng, n_train=50_000, images=None):
    """The fresh train state of the run `config` describes, initialised from `rng` (and from
    the training `images` where the model initialises from data), for `n_train` images.

    With `rng` a stack of N keys: N such states, stacked along a leading axis into one pytree
    (`is_stacked`), each equal to the state its key alone gives; the steps train them at once.
    """
    if rng.ndim:
        return jax.vmap(lambda key: from_config(config, key, n_train, images))(rng)
    entry = models.MODELS[config.model]
    recipe = StepRecipe(
        loss=config.loss, label_smoothing=config.label_smoothing,
        augment=config.augmentations, translate_pad=config.translate_pad,
        cutout_size=config.cutout_size,
        lookahead_steps=run_length(config, n_train)[1] if config.lookahead else 0)
    return create(entry.build(jnp.dtype(config.dtype)), optimizer(config, n_train)[0], rng,
                  recipe, entry.init_from_data, images)
