"""Optimiser parts, learning-rate schedules and lookahead, built from Optax: the pieces recipes
assemble (`cifar_jax/recipes/`), reusable by any model.

Lower modules take plain values, not the config: `state.py` reads the recipe and passes them.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# --------------------------------------------------------------------------------------------
# airbench94's optimiser parts (KellerJordan/cifar10-airbench, legacy/airbench94.py), in Optax.
#
# Three pieces, each a faithful port of the PyTorch original's `main()`:
#   warmup_decay_schedule  the LambdaLR multiplier `get_lr(step)`
#   airbench_sgd           torch.optim.SGD(nesterov=True) with its parameter groups
#   lookahead_*            LookaheadState: every 5 steps, params <- ema <- lerp(ema, params)
# --------------------------------------------------------------------------------------------

# The labels `airbench_param_labels` gives, i.e. the groups `airbench_sgd` optimises apart.
WHITEN_KERNEL = "whiten_kernel"  # the whitening stem's filters: fixed, never trained
WHITEN_BIAS = "whiten_bias"  # the stem's bias: trained for the first epochs only
NORM_BIAS = "norm_bias"  # BatchNorm biases: 64x the learning rate, same absolute decay
OTHER = "other"  # everything else: the convolutions and the head


def warmup_decay_schedule(total_steps, warmup_fraction=0.23, start=0.2, peak=1.0, end=0.07):
    """The airbench learning-rate *multiplier* (unitless) as an Optax schedule of the step count.

    `schedule(count)` is the factor the base learning rate is multiplied by for the update made
    at optimiser step `count` (0-based: the first update uses count 0), exactly the original's
    `get_lr(step)` under `LambdaLR`: with `warmup = int(total_steps * warmup_fraction)` steps
    (109 of 476), linear from `start` at count 0 to `peak` at count `warmup`, then linear to
    `end` at count `total_steps`.

    LambdaLR sets the lr to `base * get_lr(0)` when it is built and to `base * get_lr(k)` after
    the k-th `scheduler.step()`, and the loop calls `optimizer.step()` before
    `scheduler.step()`, so update k (0-based) uses `get_lr(k)`: the same indexing as Optax's
    update count. The two linear pieces are equal to get_lr's `a * (1 - f) + b * f` as real
    numbers (Optax writes it `(a - b) * (1 - f) + b`), so values agree to rounding. Past
    `total_steps` Optax holds `end` where get_lr would extrapolate below it; the original never
    takes a step there.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    # Python float arithmetic, as the original: int(476 * 0.23) = int(109.48...) = 109.
    warmup_steps = int(total_steps * warmup_fraction)
    joined = optax.join_schedules(
        [
            # warmup_steps == 0 makes this a constant, which join_schedules then never uses.
            optax.linear_schedule(start, peak, warmup_steps),
            optax.linear_schedule(peak, end, total_steps - warmup_steps),
        ],
        boundaries=[warmup_steps],
    )

    def schedule(count):
        # Optax's counts are int32, and int32 / int is float32 even with jax_enable_x64: take
        # the count as the default float (exact for any count below 2**24) so that the
        # multiplier is float64 when x64 is on, as the original's Python floats.
        return joined(jnp.asarray(count, jnp.result_type(float)))

    return schedule


class SGDCoefficients(NamedTuple):
    """The PyTorch-form hyperparameters airbench derives from its decoupled ones.

    `lr` and `lr_biases` are per unit of the *summed* (not averaged) batch loss's gradient;
    `weight_decay` is the absolute decay per step at multiplier 1 (each group's coupled decay
    coefficient is `weight_decay / group_lr`, so `group_lr * coefficient = weight_decay`).
    """

    lr: float
    lr_biases: float
    weight_decay: float


def airbench_coefficients(lr, momentum, weight_decay, batch_size, bias_scaler):
    """Converts airbench's decoupled `lr` (per 1024 examples) and `weight_decay` (per 1024
    examples) into PyTorch SGD's, exactly as the original's `main()` does.

    With Nesterov momentum and a gradient constant in time, a step is `1 + 1/(1 - momentum)`
    times the gradient (1 + 6.67 at 0.85); dividing the lr by `kilostep_scale = 1024 * (1 +
    1/(1 - momentum))` makes the average step independent of the momentum and expresses the lr
    per 1024 examples of the summed loss, so momentum and lr can be tuned apart. The decay is
    expressed the same way and scaled by the batch size, so that the decay per example seen is
    independent of the batch size.
    """
    kilostep_scale = 1024 * (1 + 1 / (1 - momentum))
    torch_lr = lr / kilostep_scale  # 1.4648e-3 with the defaults
    return SGDCoefficients(
        lr=torch_lr,
        lr_biases=torch_lr * bias_scaler,
        weight_decay=weight_decay * batch_size / kilostep_scale,
    )


def _key_name(key):
    """One component of a JAX key path (DictKey, GetAttrKey, SequenceKey...) as a string."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def airbench_param_label(path):
    """The optimiser group of one parameter, from its path (a sequence of names).

    The rule, applied to the path's components case-insensitively:
      - a component starting with "whiten": the stem. Its "bias" is `WHITEN_BIAS`; anything
        else in it (the kernel) is `WHITEN_KERNEL`, never trained.
      - else a component starting with "batchnorm" or "norm" (Flax's `BatchNorm_0`, or a
        module named `norm1`): `NORM_BIAS`. This is the original's rule (`'norm' in name`
        among trainable parameters), whose BatchNorms train only their bias: the network
        must not give them a trainable scale, or it would be trained here at 64x the lr.
      - else `OTHER`.
    """
    names = [str(name).lower() for name in path]
    if any(name.startswith("whiten") for name in names):
        return WHITEN_BIAS if names[-1] == "bias" else WHITEN_KERNEL
    if any(name.startswith(("batchnorm", "norm")) for name in names):
        return NORM_BIAS
    return OTHER


def airbench_param_labels(params):
    """The tree of `airbench_param_label`s of a params tree (dicts, FrozenDicts; wrapped in
    {"params": ...} or not): the `param_labels` function of `optax.partition`."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: airbench_param_label([_key_name(key) for key in path]), params
    )


def _torch_sgd(learning_rate, decay_coefficient, momentum):
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
_partition = getattr(optax, "partition", None) or optax.multi_transform


def airbench_sgd(*, lr, momentum, weight_decay, batch_size, bias_scaler, whiten_bias_steps):
    """airbench94's optimiser: Nesterov SGD with its parameter groups, at a constant rate.

    Equivalent to the original's `torch.optim.SGD(param_configs, momentum, nesterov=True)`
    over a Flax params tree of the airbench network; its `LambdaLR` schedule is the run's to
    apply (`scheduled`), by scaling these updates. Groups (see `airbench_param_label` for how
    paths are labelled):
      - whiten kernel: never updated (the original sets requires_grad=False).
      - whiten bias: as "other" for the first `whiten_bias_steps` updates, then exactly zero
        updates (torch stops giving it a gradient after epoch 3 and skips it; the buffer
        state here keeps running but the parameter no longer changes).
      - norm biases: lr `lr_biases = lr * bias_scaler`, coupled decay coefficient
        `wd / lr_biases` (the same absolute decay `wd` as every other parameter).
      - other: lr `lr`, coupled decay coefficient `wd / lr`.
    A schedule multiplies each group's lr but not its decay coefficient, so the decay shrinks
    with it (torch's lr_t * wd * p).

    Args (units as the original's `hyp['opt']`):
      lr: learning rate per 1024 examples, decoupled from momentum (see
        `airbench_coefficients`). The gradients given to `update` must be those of the loss
        *summed* over the batch, as the original's, not averaged.
      momentum: Nesterov momentum.
      weight_decay: decay per 1024 examples, decoupled from the lr.
      batch_size: examples per step (scales the decay, as the original).
      bias_scaler: the norm biases' lr multiplier.
      whiten_bias_steps: updates during which the stem bias trains (3 epochs' in the original).
    """
    coef = airbench_coefficients(lr, momentum, weight_decay, batch_size, bias_scaler)
    # The stem bias steps as "other" (x 1.0, exactly), then its updates are x 0.0 from update
    # `whiten_bias_steps` on, which leaves the parameter bit-for-bit unchanged.
    until_frozen = optax.scale_by_schedule(lambda count: jnp.where(count < whiten_bias_steps,
                                                                   1.0, 0.0))
    return _partition(
        {
            WHITEN_KERNEL: optax.set_to_zero(),
            WHITEN_BIAS: optax.chain(
                _torch_sgd(coef.lr, coef.weight_decay / coef.lr, momentum), until_frozen),
            NORM_BIAS: _torch_sgd(coef.lr_biases, coef.weight_decay / coef.lr_biases, momentum),
            OTHER: _torch_sgd(coef.lr, coef.weight_decay / coef.lr, momentum),
        },
        airbench_param_labels,
    )


# --- Lookahead ------------------------------------------------------------------------------
#
# The original keeps `ema`, a copy of the whole state_dict (parameters and BatchNorm running
# stats), and after every 5th optimiser step moves it toward the model and copies it back:
# ema = lerp(ema, model, 1 - decay); model = ema. After the last step the model takes the ema.
# Its ema starts as the model's state when LookaheadState is built (before the stem's
# whitening init there, which the first update, at decay ~1e-6, all but overwrites); here the
# caller starts it from the initialised state, `ema = current`.


def lookahead_decay(step, total_steps):
    """The fraction of the old ema kept at a lookahead update (unitless, 0 to 0.774).

    `0.95**5 * (step / total_steps)**3`, where `step` is the number of optimiser steps done
    (after the increment: the original's `alpha_schedule[current_steps]`). float32, as the
    original's torch tensor; `step` may be traced.
    """
    frac = jnp.asarray(step, jnp.float32) / jnp.float32(total_steps)
    return jnp.float32(0.95**5) * frac**3


def _lerp(start, end, weight):
    """torch.lerp: `start + weight * (end - start)`, in torch's two-sided form, which returns
    `end` exactly at weight 1 and `start` exactly at weight 0."""
    diff = end - start
    return jnp.where(weight < 0.5, start + weight * diff, end - diff * (1 - weight))


def lookahead_update(ema, current, decay):
    """One lookahead update over any pytree: `(new_ema, new_current)`.

    `new_ema = ema + (1 - decay) * (current - ema)` elementwise (torch's lerp, computed in
    at least float32 and cast back to each leaf's dtype) and `new_current = new_ema`. Leaves
    that are not floating point (counters) are left as they are in both, as the original
    skips them.
    `decay` is the fraction of the old ema kept: 1.0 makes `current` take the ema unchanged.
    """
    weight = 1 - jnp.asarray(decay, jnp.float32)

    def update(e, c):
        dtype = jnp.result_type(e)
        if not jnp.issubdtype(dtype, jnp.floating):
            return e
        compute = jnp.promote_types(dtype, jnp.float32)  # half types in float32, as torch
        return _lerp(jnp.asarray(e, compute), jnp.asarray(c, compute),
                     weight.astype(compute)).astype(dtype)

    new_ema = jax.tree.map(update, ema, current)
    # As torch's copy_, the model keeps its own dtype (its ema may be kept in another).
    new_current = jax.tree.map(
        lambda ne, c: ne.astype(jnp.result_type(c))
        if jnp.issubdtype(jnp.result_type(c), jnp.floating) else c,
        new_ema, current,
    )
    return new_ema, new_current


def lookahead_step(ema, current, step, total_steps, every=5):
    """The original's lookahead after optimiser step number `step` (1-based: steps done).

    When `step % every == 0` (and step > 0): `lookahead_update` with
    `lookahead_decay(step, total_steps)`. When `step >= total_steps`: the final copy, an
    update with decay 1.0 (ema unchanged, current = ema); when both hold, the periodic
    update alone has the same effect. Otherwise both are returned unchanged. Jittable with a
    traced `step` (`total_steps` and `every` are plain ints); `lax.cond` skips the work on
    steps without an update.
    """
    step = jnp.asarray(step)
    periodic = (step % every == 0) & (step > 0)
    final = step >= total_steps
    decay = jnp.where(periodic, lookahead_decay(step, total_steps), jnp.float32(1.0))
    return jax.lax.cond(
        periodic | final,
        lambda: lookahead_update(ema, current, decay),
        lambda: (ema, current),
    )


# --- The run's schedule ----------------------------------------------------------------------

# name -> (total_steps -> the learning-rate multiplier at optimiser step `count`)
SCHEDULES = {"constant": lambda total_steps: lambda count: 1.0,
             "warmup_decay": warmup_decay_schedule}


def scheduled(tx, schedule, total_steps):
    """`tx` with its learning rate scheduled: its updates multiplied by the schedule's
    multiplier at each step (`optax.scale_by_schedule`).

    An optimiser's update is proportional to its learning rate (Optax's end in
    `scale_by_learning_rate`; airbench's coupled decay coefficient is fixed by the base rate),
    so this equals building it with the scheduled rate, but for rounding; and the optimiser
    keeps a plain number for its rate. "constant" leaves `tx` as it is: the tutorial's
    optimisers run exactly as before.
    """
    if schedule == "constant":
        return tx
    return optax.chain(tx, optax.scale_by_schedule(SCHEDULES[schedule](total_steps)))
