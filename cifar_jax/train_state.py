"""The train state: trainable parameters, model state (BatchNorm statistics), optimiser state,
the lookahead average and the step, as one pytree that jit donates, Orbax saves and vmap can
batch; and building a fresh one from a run's config."""

import dataclasses
import functools
import inspect
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from cifar_jax import models, ops, optim
from cifar_jax.data import IMAGE_SHAPE
from cifar_jax.registry import CONTRACTS, ExtensionError, lookup, parameters
from cifar_jax.steps import StepRecipe, path_name

DEFAULT_RECIPE = StepRecipe()


class TrainState(struct.PyTreeNode):
    """`params` are what the optimiser updates; `batch_stats` are what the model updates itself
    in training (BatchNorm's running statistics; {} for models without any); `ema` is the
    lookahead average of both ({} without lookahead). `recipe` says how a step trains.

    `model`, `tx` and `recipe` are static: jit keys its compiled programs on them, by equality.
    Modules and recipes compare by their attributes (both are dataclasses), and `optimizer`
    gives equal runs the same transformation: a second run like the first in one process (a
    notebook, a script of runs) reuses its compiled steps instead of tracing them again.
    """

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: optax.OptState
    ema: Any
    model: nn.Module = struct.field(pytree_node=False)
    tx: optax.GradientTransformation = struct.field(pytree_node=False)
    recipe: StepRecipe = struct.field(pytree_node=False, default=DEFAULT_RECIPE)

    @property
    def apply_fn(self):
        """The model's `apply` as this backend runs it fastest (`ops.for_backend`: on the CPU,
        its XLA convolutions as matmuls). (A bound method is static only by identity, the
        module by value: the state holds the module.)"""
        return ops.for_backend(self.model.apply)

    @property
    def variables(self):
        """The Flax variables the model is applied to."""
        return {"params": self.params, "batch_stats": self.batch_stats}

    def apply_gradients(self, grads, batch_stats):
        """One optimiser step on `params`; `batch_stats` replace the old ones untouched by it."""
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        return self.replace(step=self.step + 1, params=optax.apply_updates(self.params, updates),
                            batch_stats=batch_stats, opt_state=opt_state)


class SweptState(TrainState):
    """A sweep's stacked state (`--sweep`): `hyperparams` holds each member's values of the swept
    settings, {key: [members]} float32 (`hyperparam_keys`), which the step hands to the loss and
    the augmentations they belong to (`StepRecipe.swept`). The optimiser's swept settings are
    also leaves of its own state (`optax.inject_hyperparams`), where its update reads them. (A
    subclass, not a field of TrainState: the checkpoints of runs without a sweep keep their
    layout.)"""

    hyperparams: Any = None


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
                      opt_state=jax.jit(tx.init)(params), ema=ema, model=model, tx=tx,
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


def optimizer(config, n_train, point=None):
    """(optax transformation, the schedule's learning-rate multiplier at step s) of `config`'s
    recipe: its optimiser with the learning rate, its own settings, and what the run gives
    it where its signature names it (the batch size, the run's length, ...), under the run's
    schedule. For a sweep, `point` gives the swept settings' values (by default its first
    point's), and the optimiser's become leaves of its state (`optax.inject_hyperparams`),
    which each member's state sets to its own (`from_config`)."""
    total = run_length(config, n_train)[1]
    fn = lookup("optimizer", config.optimizer).obj
    swept = optimizer_arguments(config)
    point = config.points()[0] if point is None else point
    given = _given(config, n_train, point)
    learning_rate = point.get("learning_rate", config.learning_rate)  # the first argument
    names = parameters(fn)
    arguments = tuple((name, given[name]) for name in list(names)[1:] if name in given)
    # swept: the optimiser's arguments that stay Python numbers (the others become leaves)
    static = tuple(sorted(set(names) - set(swept.values()))) if swept else None
    multiplier = optim.SCHEDULES[config.schedule](total)
    return (_transformation(config.optimizer, fn, learning_rate, arguments, static,
                            config.schedule, total), lambda step: float(multiplier(step)))


def _given(config, n_train, point):
    """What the run gives its optimiser by name: the batch size, the run's length, ..., its
    own settings, and a sweep's `point`'s values of those it sweeps."""
    per_epoch, total = run_length(config, n_train)
    swept = optimizer_arguments(config)
    return {"batch_size": config.batch_size, "total_steps": total, "steps_per_epoch": per_epoch,
            "dtype": config.dtype, "schedule": config.schedule,
            **config.settings_for("optimizer"),
            **{swept[setting]: value for setting, value in point.items() if setting in swept}}


def freezing(config, n_train, params):
    """{parameter path ("whiten/bias"): the first (0-based) step from which the optimiser
    leaves it unchanged} of the parameters the run's optimiser stops training, as its
    `freezes` attribute says (airbench's stem bias after 3 epochs: `optim.nesterov`); {} for
    an optimiser without one. In a sweep, those every point freezes, from the step the last
    one does. From then on the steps take no gradient for them (`StepRecipe.frozen`): what
    PyTorch's requires_grad_(False) spares.

    `freezes(paths, **arguments)`: `paths` are the parameters' ("group1/conv1/kernel"), the
    arguments all of the optimiser's, as the run calls it (its defaults filled in)."""
    fn = lookup("optimizer", config.optimizer).obj
    if not hasattr(fn, "freezes"):
        return {}
    paths = [path_name(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    names = parameters(fn)
    found = []
    for point in config.points():
        given = {next(iter(names)): config.learning_rate, **_given(config, n_train, point)}
        arguments = inspect.signature(fn).bind_partial(
            **{name: value for name, value in given.items() if name in names})
        arguments.apply_defaults()
        frozen = fn.freezes(paths, **arguments.arguments)
        if not isinstance(frozen, dict):
            raise ExtensionError(f"optimizer {config.optimizer!r}: its freezes returned a "
                                 f"{type(frozen).__name__}, not a dict {{parameter path such as "
                                 f"{paths[0]!r}: the first step it is frozen from}}")
        found.append(frozen)
    return {path: max(f[path] for f in found) for path in found[0]
            if all(path in f for f in found)}


# Equal arguments (the settings are numbers, strings and tuples, `Config` checks) give the same
# object, which jit's caches see as equal (`TrainState`).
@functools.lru_cache(maxsize=64)
def _transformation(name, fn, learning_rate, arguments, static, schedule, total):
    """The optimiser `fn` (registered as `name`) with `learning_rate` and `arguments` ((name,
    value) pairs), scheduled; with `static` not None, built by `optax.inject_hyperparams`, the
    arguments not in `static` leaves of its state."""
    if static is None:
        tx = fn(learning_rate, **dict(arguments))
    else:
        tx = optax.inject_hyperparams(fn, static_args=static)(
            **{next(iter(parameters(fn))): learning_rate, **dict(arguments)})
    if not isinstance(tx, optax.GradientTransformation):
        raise ExtensionError(f"optimizer {name!r} returned a {type(tx).__name__}, not an "
                             f"optax.GradientTransformation; expected {CONTRACTS['optimizer']}")
    return optim.scheduled(tx, schedule, total)


def optimizer_arguments(config):
    """{swept setting: the optimiser's argument for it} of the settings a sweep varies that the
    optimiser takes: the learning rate (its first argument) and its own ("optimizer.b2")."""
    first = next(iter(parameters(lookup("optimizer", config.optimizer).obj)))
    return {setting: first if setting == "learning_rate" else setting[len("optimizer."):]
            for setting, _ in config.sweep
            if setting == "learning_rate" or setting.startswith("optimizer.")}


def hyperparam_keys(config):
    """{swept setting: its key in a SweptState's `hyperparams`}: its own name ("b2"), or, where
    two swept settings share it, its whole name with ':' for '.' (Orbax joins a checkpoint's
    keys with '.', so a key may not hold one)."""
    names = [setting for setting, _ in config.sweep]
    own = [setting.rpartition(".")[2] for setting in names]
    return {setting: short if own.count(short) == 1 else setting.replace(".", ":")
            for setting, short in zip(names, own)}


def step_recipe(config, n_train):
    """The `StepRecipe` of `config`: its loss and augmentations with their settings."""
    keys = hyperparam_keys(config)
    return StepRecipe(
        loss=config.loss, loss_settings=tuple(config.settings_for("loss").items()),
        reduction=config.reduction,
        augment=tuple((name, tuple(config.settings_for("augment", name).items()))
                      for name in config.augmentations),
        swept=tuple((keys[setting], setting) for setting, _ in config.sweep
                    if setting.startswith(("loss.", "augment."))),
        lookahead_steps=run_length(config, n_train)[1] if config.lookahead else 0)


def from_config(config, rng, n_train=50_000, images=None):
    """The fresh train state of the run `config` describes, initialised from `rng` (and from
    the training `images` where the model initialises from data), for `n_train` images.

    With `rng` a stack of N >= 1 keys: N such states, stacked along a leading axis into one
    pytree (`is_stacked`), each equal to the state its key alone gives; the steps train them
    at once.
    A sweep's N = `config.members` states hold each its point's values (`SweptState`).
    """
    if config.sweep:
        return _swept(config, rng, n_train, images)
    if rng.ndim and len(rng) == 1:  # a stack of one: its model's own state, to the last bit
        return jax.tree.map(lambda leaf: leaf[None], from_config(config, rng[0], n_train, images))
    if rng.ndim:
        return jax.vmap(lambda key: from_config(config, key, n_train, images))(rng)
    return create(build_model(config), optimizer(config, n_train)[0], rng,
                  step_recipe(config, n_train), images)


def build_model(config):
    """The run's model: its module with its settings."""
    return models.build(config.model, config.dtype, config.settings_for("model"))


def member_values(config):
    """{swept setting: its value for each member} as float32 [members], point by point."""
    return {name: np.repeat(np.array([point[name] for point in config.points()], np.float32),
                            config.num_seeds) for name, _ in config.sweep}


def set_hyperparams(opt_state, config, values):
    """The state of a sweep's optimiser (`optimizer`) with one member's values of the swept
    settings ({setting: value}) set where it holds those it takes."""
    arguments = optimizer_arguments(config)
    return optax.tree_utils.tree_set(
        opt_state, **{arguments[k]: v for k, v in values.items() if k in arguments})


def _swept(config, rng, n_train, images):
    """`from_config` of a sweep: one state per member (a point's seed), stacked. Each is the
    state its point's own run starts from, its optimiser's swept settings set in its state."""
    module = build_model(config)
    tx = optimizer(config, n_train)[0]  # one program for every point, their values its leaves
    recipe = step_recipe(config, n_train)
    keys = hyperparam_keys(config)

    def member(key, values):
        state = create(module, tx, key, recipe, images)
        opt_state = set_hyperparams(state.opt_state, config, values)
        fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(state)}
        return SweptState(**{**fields, "opt_state": opt_state},
                          hyperparams={keys[k]: v for k, v in values.items()})

    return jax.vmap(member)(rng, member_values(config))
