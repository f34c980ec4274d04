"""What a model, optimiser, augmentation and loss must be (`config.CONTRACTS`), checked before a
run touches anything: on abstract values (`jax.eval_shape`), so nothing is computed or compiled,
in well under a second. A piece that breaks its contract is one line naming it and what was
expected (ExtensionError), not a traceback from inside the compiled step.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from cifar_jax import augment, models
from cifar_jax import state as train_state
from cifar_jax.config import CONTRACTS, REGISTRY, ExtensionError, call, lookup
from cifar_jax.data import IMAGE_SHAPE

BATCH = 2  # images in the abstract batch the pieces are tried on
NUM_CLASSES = 10


def check(config, n_train=50_000):
    """Each piece `config` names keeps its contract, or ExtensionError says which does not.
    Returns what the run should say at its start about them (a list of lines, maybe empty)."""
    model = _model(config)
    tx, _ = _attempt("optimizer", config.optimizer, "failed when called with the learning rate "
                     "and the settings it names", train_state.optimizer, config, n_train)
    key = jax.random.key(0)
    images = jax.ShapeDtypeStruct((BATCH, *IMAGE_SHAPE), jnp.float32)
    variables = _attempt("model", config.model, f"failed to initialise on images "
                         f"{list(images.shape)}", jax.eval_shape,
                         lambda x: model.init(key, x, train=False), images)
    jaxprs = {}
    for train in (True, False):  # traced once each: the training one is read for convolutions
        jaxprs[train], logits = _attempt(
            "model", config.model, f"failed on images {list(images.shape)}",
            jax.make_jaxpr(lambda v, x, train=train: _apply(model, v, x, train), return_shape=True),
            variables, images)
        if getattr(logits, "shape", None) != (BATCH, NUM_CLASSES):
            _fail("model", config.model, f"returns {_describe(logits)} for {BATCH} images, not "
                  f"logits [{BATCH}, {NUM_CLASSES}]")
    params = variables["params"]
    # A sweep's values reach the pieces as traced JAX scalars, not Python numbers (in the
    # optimiser's state, which is traced here too).
    swept = {name: jax.ShapeDtypeStruct((), jnp.float32) for name, _ in config.sweep}
    how = (f"failed with the swept {', '.join(swept)} as traced JAX values (the step gives every "
           "point's at once: compute with them, but not in Python's if, round or int)")
    _attempt("optimizer", config.optimizer, how if train_state.optimizer_arguments(config)
             else "failed to update the model's parameters", jax.eval_shape,
             lambda p: tx.update(p, tx.init(p), p), params)
    recipe = train_state.step_recipe(config, n_train)
    uint8 = jax.ShapeDtypeStruct((BATCH, *IMAGE_SHAPE), jnp.uint8)
    for name in config.augmentations:
        out = _attempt("augmentation", name, f"failed on uint8 images {list(uint8.shape)}",
                       jax.eval_shape, lambda x, name=name: augment.apply(
                           x, (name,), key, key, indices=jnp.arange(BATCH), epoch=0,
                           settings=dict(recipe.settings)), uint8)
        if (getattr(out, "shape", None), getattr(out, "dtype", None)) != (uint8.shape, uint8.dtype):
            _fail("augmentation", name, f"returns {_describe(out)} for uint8 images "
                  f"{list(uint8.shape)}")
    losses = _attempt("loss", config.loss, how if swept else f"failed on logits [{BATCH}, "
                      f"{NUM_CLASSES}] and labels [{BATCH}]", jax.eval_shape,
                      lambda logits, labels, values: call(
                          lookup("loss", config.loss).obj, logits, labels,
                          **{**dict(recipe.settings), **values}),
                      jax.ShapeDtypeStruct((BATCH, NUM_CLASSES), jnp.float32),
                      jax.ShapeDtypeStruct((BATCH,), jnp.int32), swept)
    if getattr(losses, "shape", None) != (BATCH,):
        _fail("loss", config.loss, f"returns {_describe(losses)} for a batch of {BATCH}, not one "
              f"loss per example [{BATCH}] (the step takes their mean or sum)")
    return [*(f"note: {kind} {name!r} is defined in __main__ (a script or a notebook) or inside "
              "a function: this run trains, but --resume, evaluate and predict in another "
              "process need it in a module on PYTHONPATH, registered there or named as "
              "module:attribute" for kind, name in _not_importable(config)),
            *_slow_convolutions(config, jaxprs[True])]


def _apply(model, variables, images, train):
    return model.apply(variables, images, train=train, rngs={"dropout": jax.random.key(0)},
                       mutable=["batch_stats"])[0]


def _slow_convolutions(config, jaxpr):
    """A note for a model (`jaxpr`: its training forward pass) that convolves with XLA's own
    convolution on the CPU, where XLA runs it inside the compiled training loop about 20x
    slower than outside (jax-ml/jax#12868)."""
    if jax.default_backend() != "cpu":
        return []
    if "conv_general_dilated" not in str(jaxpr):
        return []
    return [(f"note: model {config.model!r} convolves with XLA's convolution, which XLA:CPU runs "
            "about 20x slower inside the compiled training loop (jax-ml/jax#12868): give its "
            "nn.Conv layers conv_general_dilated=cifar_jax.ops.default_conv(), as the built-in "
            "models do (the same maths as a matmul)")]


def _model(config):
    model = _attempt("model", config.model, "could not be built", models.build, config.model,
                     config.dtype)
    if not isinstance(model, nn.Module):
        _fail("model", config.model, f"gave a {type(model).__name__}, not a Flax module")
    try:  # jit keys the compiled steps on the module, by its attributes
        hash(model)
    except TypeError:
        _fail("model", config.model, "has an attribute that cannot be hashed (jit keys the "
              "compiled steps on the module): give it a tuple, not a list or a dict")
    return model


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
