"""The train state: trainable parameters, model state (BatchNorm statistics), optimiser state,
the lookahead average and the step, as one pytree that jit donates, Orbax saves and vmap can
batch; and building a fresh one from a run's config."""

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from cifar_jax import models, optim
from cifar_jax.config import CONTRACTS, ExtensionError, call, lookup, parameters
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


def create(model, tx, rng, recipe=DEFAULT_RECIPE, images=None):
    """A fresh state: `model` initialised from `rng` on one image (then, where the model has
    an `init_from_data` method and the training `images` are given, from them), and `tx`'s
    state for its params."""
    variables = _init_variables(model, rng)
    if images is not None and hasattr(model, "init_from_data"):
        variables = model.init_from_data(variables, images)
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


def settings(config):
    """The settings a piece may name (`config.call`): every field of `config` that is set."""
    return {k: v for k, v in dataclasses.asdict(config).items() if v is not None}


def optimizer(config, n_train):
    """(optax transformation, learning rate at step s) of `config`'s recipe: its optimiser,
    given the settings its signature names and the run's length, with the run's schedule."""
    per_epoch, total = run_length(config, n_train)
    named = {k: v for k, v in settings(config).items() if k != "learning_rate"}  # the first
    tx = call(lookup("optimizer", config.optimizer).obj, config.learning_rate, **named,
              total_steps=total, steps_per_epoch=per_epoch)
    if not isinstance(tx, optax.GradientTransformation):
        raise ExtensionError(f"optimizer {config.optimizer!r} returned a {type(tx).__name__}, not "
                             f"an optax.GradientTransformation; expected {CONTRACTS['optimizer']}")
    multiplier = optim.SCHEDULES[config.schedule](total)
    return (optim.scheduled(tx, config.schedule, total),
            lambda step: config.learning_rate * float(multiplier(step)))


def step_recipe(config, n_train):
    """The `StepRecipe` of `config`: its loss and augmentations, the settings they name."""
    named = set(parameters(lookup("loss", config.loss).obj)).union(
        *(parameters(lookup("augmentation", name).obj) for name in config.augmentations))
    return StepRecipe(
        loss=config.loss, reduction=config.reduction, augment=config.augmentations,
        settings=tuple(sorted((k, v) for k, v in settings(config).items() if k in named)),
        lookahead_steps=run_length(config, n_train)[1] if config.lookahead else 0)


def from_config(config, rng, n_train=50_000, images=None):
    """The fresh train state of the run `config` describes, initialised from `rng` (and from
    the training `images` where the model initialises from data), for `n_train` images.

    With `rng` a stack of N keys: N such states, stacked along a leading axis into one pytree
    (`is_stacked`), each equal to the state its key alone gives; the steps train them at once.
    """
    if rng.ndim:
        return jax.vmap(lambda key: from_config(config, key, n_train, images))(rng)
    return create(models.build(config.model, config.dtype), optimizer(config, n_train)[0], rng,
                  step_recipe(config, n_train), images)
