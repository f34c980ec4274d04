"""Flax NNX models, written as Flax's current docs write them (`nnx.Conv(3, 32, (3, 3),
rngs=rngs)`, `nnx.BatchNorm`, `nnx.Dropout`, switched by `model.train()` and `model.eval()`),
trained as every other model: as a Linen module made by Flax's own bridge
(`nnx.bridge.ToLinen`), whose variables are the NNX module's state (`nnx.Param` in `params`,
`nnx.BatchStat` in `batch_stats`, as plain arrays). The bridge builds the NNX module again
from those variables each time it is traced, so the compiled steps are the module's own
computation: its random initialisation is dead code there, which XLA drops (the compiled step
counts the flops of its Linen twin's).

The class's keyword parameters are the model's settings (`--model.width 64`) and `dtype=` is
given where it takes one, as for a Linen module; `rngs` is the run's: the init key for the
parameters, the step's key for dropout.
"""

import inspect

import jax
from flax import nnx
from flax.core import FrozenDict

from cifar_jax.registry import parameters


def _in_mode(module, images, train):
    """The NNX module on `images` in training or evaluation mode, as Flax's docs switch it
    (Dropout's `deterministic`, BatchNorm's `use_running_average`)."""
    if train:
        module.train()
    else:
        module.eval()
    return module(images)


class FromNNX(nnx.bridge.ToLinen):
    """An NNX module class as a Linen module: `apply(variables, images, train=...)`."""

    def init(self, rngs, *args, **kwargs):
        # The NNX constructor hands its layers the streams they fork (a Dropout's "dropout")
        # from its Rngs, which the bridge fills with init's keys alone: a "default" stream
        # answers for any the run does not give. Only the "params" stream's draws are kept.
        rngs = dict(rngs) if isinstance(rngs, dict) else {"params": rngs}
        rngs.setdefault("default", jax.random.fold_in(rngs["params"], 1))
        return super().init(rngs, *args, **kwargs)

    def __call__(self, images, train=False):
        return super().__call__(images, nnx_method=_in_mode, train=train)


def builder(nnx_class):
    """A build function for `nnx_class`, with its signature: `build(**settings)` is the Linen
    module of `nnx_class(**settings, rngs=...)`."""
    keywords = parameters(nnx_class)

    def build(**settings):
        return FromNNX(nnx_class, kwargs=FrozenDict(settings), metadata_fn=None,
                       skip_rng="rngs" not in keywords)  # a module that draws nothing

    build.__signature__ = inspect.Signature(keywords.values())
    return build
