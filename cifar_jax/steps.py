"""The pure train and eval steps, and the compiled loops that run them over batches."""

import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cifar_jax import augment, ops, optim
from cifar_jax.data import to_float
from cifar_jax.optim.sgd import key_name
from cifar_jax.registry import lookup


class StepRecipe(NamedTuple):
    """How a train step trains, fixed for a run (a static part of the train state).

    loss: the per-example loss's name (registered, or an import path), with `loss_settings`,
    its own settings as (name, value) pairs; reduction: "mean" or "sum" of it over the batch's
    real examples; augment: the augmentations, each (name, its settings as (name, value)
    pairs), applied on the device to each batch in that order; swept: for a sweep, (key,
    setting) of the loss's and the augmentations' swept settings ("loss.gamma",
    "augment.NAME.SETTING"), whose values each model holds in its state's `hyperparams[key]`;
    lookahead_steps: the run's length for lookahead's schedule (0: no lookahead); frozen: the
    paths ("whiten/bias") of parameters the optimiser no longer changes, whose gradient the
    step does not take (`train_state.freezing`). Names and plain values only, so that equal
    recipes share one compiled step.
    """

    loss: str = "cross_entropy"
    loss_settings: tuple[tuple[str, Any], ...] = ()
    reduction: str = "mean"
    augment: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    swept: tuple[tuple[str, str], ...] = ()
    lookahead_steps: int = 0
    frozen: tuple[str, ...] = ()

    def pieces(self, values=None):
        """({setting: value} of the loss, [(name, {setting: value})] of the augmentations): the
        settings the recipe fixes, with a sweep's `values` ({key: traced value}, a model's
        `hyperparams`) in place of the swept ones."""
        swept = {setting: (values or {})[key] for key, setting in self.swept}

        def own(head, fixed):
            return {**dict(fixed), **{name[len(head):]: value for name, value in swept.items()
                                      if name.startswith(head)}}

        return (own("loss.", self.loss_settings),
                [(name, own(f"augment.{name}.", fixed)) for name, fixed in self.augment])


def _metrics(logits, losses, batch):
    """Sums over the real (mask 1) examples of a batch; divide by `count` to average."""
    mask = batch["mask"]
    return {"loss_sum": (losses * mask).sum(),
            "correct": ((logits.argmax(-1) == batch["label"]) * mask).sum(),
            "count": mask.sum()}


# A per-example loss this far above a uniform guess's (ln 10) does not come back: a training
# loop reports the first step whose loss reaches it (NaN too), and the run stops as for NaN.
DIVERGED_LOSS = 100 * math.log(10)


def _no_sums():
    """The sums of no step: what `_summed` adds a loop's steps to."""
    zero = jnp.zeros((), jnp.float32)
    return {"loss_sum": zero, "loss_sum_low": zero, "correct": zero, "count": zero}


def _summed(sums, metrics):
    """`sums` with one step's metric sums added. A loop keeps its steps' sums in its carry, not
    as a stacked output: XLA:CPU since jaxlib 0.11.1 rewrites the whole stack for each small
    write inside a loop (jax-ml/jax#40101). The counts add exactly (whole numbers in float32);
    the loss sums with their rounding error kept apart (Neumaier's compensated summation):
    `loss_sum + loss_sum_low`, taken in float64 (`summarise`), is their float64 sum to about
    1e-14, as when each step's was summed on the host."""
    total, x = sums["loss_sum"], metrics["loss_sum"]
    new = total + x
    low = jnp.where(jnp.abs(total) >= jnp.abs(x), (total - new) + x, (x - new) + total)
    return {"loss_sum": new, "loss_sum_low": sums["loss_sum_low"] + low,
            "correct": sums["correct"] + metrics["correct"],
            "count": sums["count"] + metrics["count"]}


def cross_entropy(logits, labels, label_smoothing=0.0):
    """Per-example cross-entropy with integer labels, against smoothed targets if asked (the
    built-in loss; the test loss is always the plain one)."""
    if isinstance(label_smoothing, (int, float)) and not label_smoothing:  # not a swept value
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def train_step(state, batch, key):
    """One optimiser step on `batch` = {image uint8 [B,32,32,3], label [B], mask [B], index [B]
    (positions in the training set), epoch (0-based)}, as `state.recipe` says.

    With the "mean" reduction, a padded partial batch trains exactly as Keras trains its short
    last batch. `key` is the run's key: this step draws from `fold_in(key, step)`
    (augmentation, dropout), and augmentations that ask for a run key (the alternating flip)
    from a part of it that stays the same all run, so a resumed run draws exactly as an
    uninterrupted one.
    """
    # A sweep's member holds its own values of the swept settings (`state.SweptState`).
    recipe = state.recipe
    loss_settings, augmentations = recipe.pieces(getattr(state, "hyperparams", None))
    run_key, step_keys = jax.random.split(key)
    augment_key, dropout_key = jax.random.split(jax.random.fold_in(step_keys, state.step))
    images = batch["image"]
    if augmentations:  # on the uint8 pixels: the same result, a quarter of the memory traffic
        images = augment.apply(images, augmentations, augment_key, run_key,
                               indices=batch["index"], epoch=batch["epoch"])
    per_example_loss = lookup("loss", recipe.loss).obj

    def loss_fn(params):
        if recipe.frozen:
            params = _without_gradient(params, recipe.frozen)
        logits, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, to_float(images), train=True,
            rngs={"dropout": dropout_key}, mutable=["batch_stats"])
        losses = per_example_loss(logits, batch["label"], **loss_settings)
        loss = (losses * batch["mask"]).sum()
        if recipe.reduction == "mean":
            loss = loss / batch["mask"].sum()
        return loss, (logits, losses, updates.get("batch_stats", {}))

    # In half precision, the gradient's sums (a bias's, over every position) accumulate in
    # float32: XLA:CPU would add them up in bfloat16 (`ops.sums_in_float32`).
    (_, (logits, losses, batch_stats)), grads = ops.sums_in_float32(
        jax.value_and_grad(loss_fn, has_aux=True))(state.params)
    new = state.apply_gradients(grads, batch_stats)
    if recipe.lookahead_steps:
        ema, current = optim.lookahead_step(new.ema, new.variables, new.step,
                                            recipe.lookahead_steps)
        new = new.replace(ema=ema, params=current["params"], batch_stats=current["batch_stats"])
    return new, _metrics(logits, losses, batch)


def _without_gradient(params, paths):
    """`params` with those at `paths` ("whiten/bias") under `stop_gradient`: their gradient is
    zero, and XLA drops the backward pass that only they needed, as PyTorch skips what a
    parameter with requires_grad=False would need. airbench's stem bias, frozen after its
    first 3 epochs: the first layer's input gradient, airbench94's step 315-318 -> 330-334
    img/s on 2 Xeon cores (docs/results.md, 2026-12-05)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: jax.lax.stop_gradient(p) if path_name(path) in paths else p, params)


def path_name(path):
    """A parameter's path in its tree (a JAX key path) as a string: "group1/conv1/kernel"."""
    return "/".join(key_name(key) for key in path)


SELECTIVE = 3  # the test-time augmentation level of cifar10-speedrun's selective TTA
SELECTIVE_FRACTION = 0.25  # of the images, the least confident, that get its views


def tta_logits(apply, variables, images, level=0):
    """The model's logits on `images`, averaged over test-time views (airbench's levels).

    0: the images alone; 1: the mean with their mirror images; 2: half of that, plus half the
    mirror-averaged logits of the images shifted one pixel up-left and one down-right (reflect
    padding): 6 views. 3 (`SELECTIVE`, cifar10-speedrun's): the images alone, but for the
    int(N x SELECTIVE_FRACTION) least confident of them (the lowest top softmax probability),
    which get the plain mean of the same 6 views (`_six_views`).

    The views go through the network in a loop (`lax.map`), not as six inlined copies of it:
    the program holds the network once, so it compiles in a third less time (airbench94 at
    batch 500 on the CPU: 5.0 s against 7.5 s) and needs one view's activations at a time;
    each view's logits are those the network gives it alone.
    """
    if level == 0:
        return apply(variables, images, train=False)
    if level == SELECTIVE:
        plain = apply(variables, images, train=False)
        chosen = _least_confident(plain, jnp.ones(len(images)))
        return jnp.where(chosen[:, None], _six_views(apply, variables, images), plain)
    views = [images, images[:, :, ::-1]]
    if level == 2:
        padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
        for shifted in (padded[:, :-2, :-2], padded[:, 2:, 2:]):
            views += [shifted, shifted[:, :, ::-1]]
    logits = jax.lax.map(lambda x: apply(variables, x, train=False), jnp.stack(views))
    mirrored = 0.5 * (logits[0::2] + logits[1::2])  # each view with its mirror image
    if level == 1:
        return mirrored[0]
    return 0.5 * mirrored[0] + 0.5 * (0.5 * (mirrored[1] + mirrored[2]))


def _six_views(apply, variables, images):
    """The mean logits of the images, them shifted one pixel up-left and down-right (reflect
    padding), and the three mirrored: cifar10-speedrun's views, weighted alike."""
    padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    views = [images, padded[:, :-2, :-2], padded[:, 2:, 2:]]
    views += [view[:, :, ::-1] for view in views]
    return jax.lax.map(lambda x: apply(variables, x, train=False), jnp.stack(views)).mean(0)


def _least_confident(logits, mask):
    """Whether each example is among the int(real x SELECTIVE_FRACTION) real (mask 1) ones of
    lowest top softmax probability (ties: the first)."""
    confidence = jnp.where(mask > 0, jax.nn.softmax(logits).max(-1), jnp.inf)
    ranks = jnp.argsort(jnp.argsort(confidence))
    return ranks < jnp.floor(mask.sum() * SELECTIVE_FRACTION)


def _selective_batches(state, images, idx, mask):
    """Level `SELECTIVE`'s logits [batches, batch, 10] of the images `images[idx]`, chosen over
    the whole set: a plain pass over every batch, then the six views for the least confident
    only (in whole batches of them, as many as the fraction of all can fill)."""
    apply, variables = state.apply_fn, state.variables
    plain = jax.lax.map(lambda i: apply(variables, to_float(images[i]), train=False), idx)
    batches, size = idx.shape
    flat, positions = plain.reshape(batches * size, -1), idx.reshape(-1)
    chosen = _least_confident(flat, mask.reshape(-1))
    capacity = -(-math.ceil(batches * size * SELECTIVE_FRACTION) // size) * size
    slots = jnp.argsort(~chosen, stable=True)[:capacity]  # the chosen first, in order
    views = jax.lax.map(lambda slot: _six_views(apply, variables, to_float(images[slot])),
                        positions[slots].reshape(-1, size)).reshape(capacity, -1)
    new = jnp.where(chosen[slots][:, None], views, flat[slots])
    return flat.at[slots].set(new).reshape(batches, size, -1)


def _flat(labels, idx, mask, outputs):
    """(the batches' labels and mask as one batch, `outputs` [batches, batch, 10] as one)."""
    batch = {"label": labels[idx].reshape(-1), "mask": mask.reshape(-1)}
    return batch, outputs.reshape(batch["label"].shape[0], -1)


def _selective_eval(state, images, labels, idx, mask):
    logits = _selective_batches(state, images, idx, mask)
    batch, flat = _flat(labels, idx, mask, logits)
    losses = optax.softmax_cross_entropy_with_integer_labels(flat, batch["label"])
    return _summed(_no_sums(), _metrics(flat, losses, batch)), logits.argmax(-1)


def eval_step(state, batch, tta=0):
    """Metric sums and predicted classes for one batch (test-time augmentation `tta`), the
    state unchanged."""
    logits = tta_logits(state.apply_fn, state.variables, to_float(batch["image"]), tta)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return _metrics(logits, losses, batch), logits.argmax(-1)


def _gather(images, labels, idx, mask):
    return {"image": images[idx], "label": labels[idx], "mask": mask, "index": idx}


def _train_batches(state, images, labels, idx, mask, key, epoch=0):
    """`train_step` over the batches `images[idx[k]]`, k = 0.. as one compiled `lax.scan`.

    The data stays on the device and no Python runs between steps. `key`: the run's key;
    `epoch`: 0-based, for the alternating flip. Returns the new state and the steps' metric
    sums (`_summed`), with `first_diverged`, the first step (0-based) whose loss per example
    is not below DIVERGED_LOSS (-1 where none; NaN counts), and `diverged_loss`, that loss.
    """
    def body(carry, batch_idx):
        state, sums, first, value, i = carry
        state, metrics = train_step(state, {**_gather(images, labels, *batch_idx),
                                            "epoch": epoch}, key)
        loss = metrics["loss_sum"] / metrics["count"]  # per example, for a "sum" loss too
        new = (first < 0) & ~(loss <= DIVERGED_LOSS)
        return (state, _summed(sums, metrics), jnp.where(new, i, first),
                jnp.where(new, loss, value), i + 1), None

    start = (state, _no_sums(), jnp.int32(-1), jnp.float32(0), jnp.int32(0))
    state, sums, first, value, _ = jax.lax.scan(body, start, (idx, mask))[0]
    return state, {**sums, "first_diverged": first, "diverged_loss": value}


train_batches = jax.jit(_train_batches, donate_argnums=0)

# N models at once (`--num-seeds`, `--sweep`): `train_batches` over a stacked state, each
# model's batch indices [N, steps, batch] and keys [N]; the images are shared. One compiled
# program, no Python loop over models, in one of two forms of the same computation:
#   vmapped   the models' matmuls batched: what accelerators want, and what splits the models
#             over devices. Each model computes what it would alone, but for rounding (XLA may
#             round batched matmuls differently in the last bit; training amplifies it).
#   in turn   `lax.map`: each model's scanned steps after the other's, the one-model program
#             inside. On one CPU device it is the faster: XLA:CPU's batched matmuls are slower
#             than its single ones, and one model already keeps the cores busy (4 points x 2
#             seeds of the CNN: x1.06 the separate runs' images/s in turn, x0.78-0.90 vmapped).
train_batches_vmapped = jax.jit(jax.vmap(_train_batches, in_axes=(0, None, None, 0, 0, 0, None)),
                                donate_argnums=0)


def _train_batches_in_turn(state, images, labels, idx, mask, key, epoch=0):
    return jax.lax.map(lambda m: _train_batches(m[0], images, labels, *m[1:], epoch),
                       (state, idx, mask, key))


train_batches_in_turn = jax.jit(_train_batches_in_turn, donate_argnums=0)


def _only(tree):
    """The model of a stack of one, its axis taken off."""
    return jax.tree.map(lambda leaf: leaf[0], tree)


def _one(tree):
    """`tree` as a stack of one, the model axis put on."""
    return jax.tree.map(lambda leaf: leaf[None], tree)


@functools.partial(jax.jit, donate_argnums=0)
def train_batches_one(state, images, labels, idx, mask, key, epoch=0):
    """A stack of one model: that model's own program (`train_batches`), the model axis taken
    off and put back inside it (free: XLA's bitcasts, the state donated as ever), so a run of
    one trains as it always has, to the last bit."""
    state, metrics = _train_batches(_only(state), images, labels, *_only((idx, mask, key)), epoch)
    return _one((state, metrics))


def train_batches_stacked(n):
    """The compiled loop for a stacked state of `n` models here: a stack of one is its model's
    own program; more train in turn on one CPU device, vmapped elsewhere (see above). Called
    as `train_batches`, the arguments with a model axis."""
    if n == 1:
        return train_batches_one
    if jax.default_backend() == "cpu" and jax.device_count() == 1:
        return train_batches_in_turn
    return train_batches_vmapped


def _eval_batches(state, images, labels, idx, mask, tta=0):
    def body(sums, batch_idx):
        metrics, predicted = eval_step(state, _gather(images, labels, *batch_idx), tta)
        return _summed(sums, metrics), predicted

    return jax.lax.scan(body, _no_sums(), (idx, mask))


@functools.partial(jax.jit, static_argnames="tta")
def eval_batches(state, images, labels, idx, mask, tta=0):
    """`eval_step` over the batches `images[idx[k]]`: the metric sums (`_summed`) and the
    predictions, stacked by batch; for a stacked state, each model's, along a leading axis.
    With `SELECTIVE` test-time augmentation the images that get the views are chosen over all
    the batches (`_selective_batches`)."""
    if tta == SELECTIVE:  # chosen over the whole set, not batch by batch
        def evaluate(s):
            return _selective_eval(s, images, labels, idx, mask)
    else:
        def evaluate(s):
            return _eval_batches(s, images, labels, idx, mask, tta)
    if not state.step.ndim:
        return evaluate(state)
    if state.step.shape[0] == 1:  # a stack of one: its model's own program (`train_batches_one`)
        return _one(evaluate(_only(state)))
    return jax.vmap(evaluate)(state)


@functools.partial(jax.jit, static_argnames="tta")
def ensemble_batches(state, images, labels, idx, mask, tta=0):
    """As `eval_batches`, for the ensemble of a stacked state's models: the mean of their
    softmaxes (each with test-time augmentation `tta`) is its prediction."""
    def metrics(probs, batch):
        losses = -jnp.log(jnp.take_along_axis(probs, batch["label"][:, None], 1)[:, 0])
        return _metrics(probs, losses, batch)

    if tta == SELECTIVE:  # each model chooses its own images, over the whole set
        probs = jax.vmap(lambda s: jax.nn.softmax(_selective_batches(s, images, idx, mask)))(
            state).mean(0)
        batch, flat = _flat(labels, idx, mask, probs)
        return _summed(_no_sums(), metrics(flat, batch)), probs.argmax(-1)

    def body(sums, batch_idx):
        batch = _gather(images, labels, *batch_idx)
        x = to_float(batch["image"])
        probs = jax.vmap(lambda s: jax.nn.softmax(tta_logits(s.apply_fn, s.variables, x, tta)))(
            state).mean(0)
        return _summed(sums, metrics(probs, batch)), probs.argmax(-1)

    return jax.lax.scan(body, _no_sums(), (idx, mask))


def summarise(metrics):
    """Metric sums (a dict of a loop's, or a list of them; a step's, or per-step sums stacked)
    -> {"loss", "accuracy"} floats."""
    chunks = jax.device_get(metrics if isinstance(metrics, list) else [metrics])
    totals = {key: sum(float(np.sum(chunk.get(key, 0), dtype=np.float64)) for chunk in chunks)
              for key in ("loss_sum", "loss_sum_low", "correct", "count")}
    return {"loss": (totals["loss_sum"] + totals["loss_sum_low"]) / totals["count"],
            "accuracy": totals["correct"] / totals["count"]}


def summarise_models(metrics, num_models):
    """`summarise` for each of N models whose metrics have a leading model axis: a list of N
    dicts, each summed exactly as the model's own run would sum it."""
    chunks = jax.device_get(metrics if isinstance(metrics, list) else [metrics])
    return [summarise([{k: v[i] for k, v in chunk.items()} for chunk in chunks])
            for i in range(num_models)]
