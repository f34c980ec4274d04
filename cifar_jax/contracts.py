"""What a model, optimiser, augmentation and loss must be (`registry.CONTRACTS`), checked before
a run touches anything: on abstract values (`jax.eval_shape`), so nothing is computed or
compiled, in well under a second. A piece that breaks its contract is one line naming it and
what was expected (ExtensionError), not a traceback from inside the compiled step. Also which of
a sweep's settings the pieces can take as traced values (`untraceable`).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from cifar_jax import augment, ops, train_state
from cifar_jax.data import IMAGE_SHAPE
from cifar_jax.registry import CONTRACTS, REGISTRY, ExtensionError, lookup

BATCH = 2  # images in the abstract batch the pieces are tried on
NUM_CLASSES = 10
IMAGES = jax.ShapeDtypeStruct((BATCH, *IMAGE_SHAPE), jnp.float32)


def check(config, n_train=50_000):
    """Each piece `config` names keeps its contract, or ExtensionError says which does not.
    Returns what the run should say at its start about them (a list of lines, maybe empty)."""
    model, variables = _model(config)
    for train in (True, False):
        logits = _attempt("model", config.model, f"failed on images {list(IMAGES.shape)}",
                          jax.eval_shape, lambda v, x, train=train: _apply(model, v, x, train),
                          variables, IMAGES)
        if getattr(logits, "shape", None) != (BATCH, NUM_CLASSES):
            _fail("model", config.model, f"returns {_describe(logits)} for {BATCH} images, not "
                  f"logits [{BATCH}, {NUM_CLASSES}]")
    _optimizer(config, variables["params"], n_train)
    _augmentations(config, n_train)
    _loss(config, n_train)
    return [*(f"note: {kind} {name!r} is defined in __main__ (a script or a notebook) or inside "
              "a function: this run trains, but --resume, evaluate and predict in another "
              "process need it in a module on PYTHONPATH, registered there or named as "
              "module:attribute" for kind, name in _not_importable(config))]


def untraceable(config, n_train=50_000):
    """The settings `config` sweeps that the pieces taking them cannot take as traced JAX
    values (a shape, a count, a Python branch on the value), each tried alone: a sweep trains
    each of their values as a program of its own (`sweep.programs`)."""
    params = _model(config)[1]["params"]

    def traces(name, values):
        alone = dataclasses.replace(config, sweep=((name, values),))
        try:
            if name == "learning_rate" or name.startswith("optimizer."):
                _optimizer(alone, params, n_train)
            elif name.startswith("loss."):
                _loss(alone, n_train)
            else:
                _augmentations(alone, n_train)
        except ExtensionError:
            return False
        return True

    return [name for name, values in config.sweep if not traces(name, values)]


def _traced(config):
    """How a piece failed with the swept values as tracers, for its message."""
    swept = ", ".join(name for name, _ in config.sweep)
    return (f"failed with the swept {swept} as traced JAX values (the step gives every "
            "point's at once: compute with them, but not in Python's if, round or int)")


def _optimizer(config, params, n_train):
    tx, _ = _attempt("optimizer", config.optimizer, "failed when called with the learning rate "
                     "and its settings", train_state.optimizer, config, n_train)
    # A sweep's values reach the pieces as traced JAX scalars, not Python numbers (in the
    # optimiser's state, which is traced here too).
    _attempt("optimizer", config.optimizer, _traced(config)
             if train_state.optimizer_arguments(config) else "failed to update the model's "
             "parameters", jax.eval_shape, lambda p: tx.update(p, tx.init(p), p), params)
    _attempt("optimizer", config.optimizer, "failed in its freezes(paths, ...)",
             train_state.freezing, config, n_train, params)


def _values(recipe):
    """A model's swept values of the loss's and the augmentations' settings, as tracers."""
    return {key: jax.ShapeDtypeStruct((), jnp.float32) for key, _ in recipe.swept}


def _augmentations(config, n_train):
    recipe = train_state.step_recipe(config, n_train)
    uint8 = jax.ShapeDtypeStruct((BATCH, *IMAGE_SHAPE), jnp.uint8)
    for k, (name, _) in enumerate(recipe.augment):
        out = _attempt("augmentation", name, _traced(config) if recipe.swept else
                       f"failed on uint8 images {list(uint8.shape)}", jax.eval_shape,
                       lambda x, v, k=k: augment.apply(
                           x, recipe.pieces(v)[1][k:k + 1], jax.random.key(0), jax.random.key(1),
                           indices=jnp.arange(BATCH), epoch=0), uint8, _values(recipe))
        if (getattr(out, "shape", None) != uint8.shape
                or getattr(out, "dtype", None) not in (jnp.uint8, jnp.float32)):
            _fail("augmentation", name, f"returns {_describe(out)} for uint8 images "
                  f"{list(uint8.shape)}")
        if out.dtype == jnp.float32 and not recipe.swept:  # the 0-255 scale, not [0, 1]
            white = jnp.full(uint8.shape, 255, jnp.uint8)
            top = float(jnp.max(augment.apply(white, recipe.pieces()[1][k:k + 1],
                                              jax.random.key(0), jax.random.key(1),
                                              indices=jnp.arange(BATCH), epoch=0)))
            if top <= 2:
                _fail("augmentation", name, f"returns float32 pixels up to {top:g} for white "
                      "uint8 images: float pixels stay in the 0-255 scale")


def _loss(config, n_train):
    recipe = train_state.step_recipe(config, n_train)
    losses = _attempt("loss", config.loss, _traced(config) if recipe.swept else
                      f"failed on logits [{BATCH}, {NUM_CLASSES}] and labels [{BATCH}]",
                      jax.eval_shape, lambda logits, labels, v: lookup("loss", config.loss).obj(
                          logits, labels, **recipe.pieces(v)[0]),
                      jax.ShapeDtypeStruct((BATCH, NUM_CLASSES), jnp.float32),
                      jax.ShapeDtypeStruct((BATCH,), jnp.int32), _values(recipe))
    if getattr(losses, "shape", None) != (BATCH,):
        _fail("loss", config.loss, f"returns {_describe(losses)} for a batch of {BATCH}, not one "
              f"loss per example [{BATCH}] (the step takes their mean or sum)")


def _apply(model, variables, images, train):
    """The model's logits as the steps compute them (`ops.for_backend`)."""
    return ops.for_backend(model.apply)(variables, images, train=train,
                                        rngs={"dropout": jax.random.key(0)},
                                        mutable=["batch_stats"])[0]


def _model(config):
    """(the run's model, its variables as abstract values)."""
    model = _attempt("model", config.model, "could not be built", train_state.build_model,
                     config)
    if not isinstance(model, nn.Module):
        _fail("model", config.model, f"gave a {type(model).__name__}, not a Flax module")
    try:  # jit keys the compiled steps on the module, by its attributes
        hash(model)
    except TypeError:
        _fail("model", config.model, "has an attribute that cannot be hashed (jit keys the "
              "compiled steps on the module): give it a tuple, not a list or a dict")
    variables = _attempt("model", config.model, f"failed to initialise on images "
                         f"{list(IMAGES.shape)}", jax.eval_shape,
                         lambda x: model.init(jax.random.key(0), x, train=False), IMAGES)
    return model, variables


def _not_importable(config):
    """(kind, name) of each registered piece of `config` that another process cannot import
    (defined in __main__, or inside a function): --resume, evaluate and predict need it there."""
    return [(kind, name) for kind, name in config.pieces()
            if name in REGISTRY[kind] and (REGISTRY[kind][name].path or "__main__:")
            .startswith("__main__:")]


def _attempt(kind, name, what, fn, *args):
    try:
        return fn(*args)
    except ExtensionError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever the user's code raises
        text = str(e).strip().splitlines()
        _fail(kind, name, f"{what}: {type(e).__name__}" + (f": {text[0]}" if text else ""))


def _fail(kind, name, what):
    raise ExtensionError(f"{kind} {name!r} {what}; expected {CONTRACTS[kind]}")


def _describe(value):
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{value.dtype} {list(value.shape)}"
    return f"a {type(value).__name__}"
