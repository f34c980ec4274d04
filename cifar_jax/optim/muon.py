"""Muon as airbench94_muon trains with it (Keller Jordan, KellerJordan/cifar10-airbench,
`airbench94_muon.py`, its `Muon` class), usable by any model: Muon on the trained 4-D kernels,
Nesterov SGD (PyTorch's form, coupled decay) on the biases and on the rest, every rate falling
linearly to zero over the run. `--optimizer muon`, or `cifar_jax.optim.muon:muon`.

Muon, per filter tensor W (the original's `Muon.step`, PyTorch layout [out, in, kh, kw]):
    buf = 0.6 buf + g;  g' = g + 0.6 buf                   (Nesterov on the raw gradient)
    W <- W * sqrt(out) / ||W||_F                            (renormalised before the step)
    W <- W - lr_t * NS3(g' as [out, in*kh*kw])              (no weight decay, no shape factor)
NS3: X = G / (||G||_F + 1e-7), transposed when out > in*kh*kw, then 3 times A = X X^T,
X = 3.4445 X + (-4.7750 A + 2.0315 A A) X (`newton_schulz`). The original has no
`max(1, rows/cols)**0.5` factor: the update is exactly lr_t times the NS output.
`optax.contrib.muon` computes something else (an EMA momentum with bias correction, that shape
factor, no renormalisation), so the pieces here are Optax's `trace`, `stateless`, `partition`.

hiverge/cifar10-speedrun's Muon (cifar10_speedrun.py at 5cd49b1) is the same optimiser with
settings of its own, off by default (airbench94_muon's steps stay bit for bit as they were):
the updates orthogonalised as one zero-padded batch (`ns_batched`) with other coefficients and
eps, a target magnitude before the normalisation, the renormalisation only every few steps
(`renorm_every`, `renorm_growth`), a decoupled decay of the filters (`filter_decay`) and
half-precision momentum buffers (`momentum_dtype`); see `muon`.
"""

import math

import jax
import jax.numpy as jnp
import optax

from cifar_jax.optim.nesterov import (
    NORM_BIAS,
    WHITEN_BIAS,
    WHITEN_KERNEL,
    airbench_param_label,
    stem_bias_frozen,
)
from cifar_jax.optim.sgd import key_name, partition, torch_sgd

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # the quintic's a, b, c
NS_EPS = 1e-7
TARGET_EPS = 1e-5  # cifar10-speedrun's, in the target-magnitude scaling

# The parameter groups `muon` optimises apart (labels as `airbench_param_label`'s).
FILTERS = "filters"  # trained 4-D kernels: Muon
BIAS = "bias"  # BatchNorm biases and any other bias: SGD at bias_lr
HEAD = "head"  # everything else (airbench's head; a CNN's Dense kernels): SGD at head_lr


def newton_schulz(g, steps=3, eps=NS_EPS, coefficients=NS_COEFFICIENTS):
    """The original's `zeropower_via_newtonschulz5(G, steps)` on a matrix `g` (or a batch of
    them, [n, rows, columns]), in g's dtype: a quintic Newton-Schulz iteration that takes g's
    singular values towards ~1 (roughly U S' V^T with S' in [0.5, 1.5], not exactly U V^T; see
    the original)."""
    a, b, c = coefficients
    norm = jnp.linalg.norm(g, axis=(-2, -1), keepdims=True)  # Frobenius: top singular value <= 1
    x = g / (norm + eps)
    tall = g.shape[-2] > g.shape[-1]
    if tall:  # iterate on the smaller Gram matrix
        x = x.swapaxes(-2, -1)
    for _ in range(steps):
        gram = x @ x.swapaxes(-2, -1)
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.swapaxes(-2, -1) if tall else x


def _torch_matrix(kernel):
    """A Flax HWIO kernel [kh, kw, in, out] as the original's matrix: its PyTorch OIHW filter
    [out, in, kh, kw] reshaped to [out, in * kh * kw]."""
    return kernel.transpose(3, 2, 0, 1).reshape(kernel.shape[3], -1)


def _flax_kernel(matrix, shape):
    """The inverse of `_torch_matrix` for a kernel of `shape` [kh, kw, in, out]."""
    kh, kw, cin, cout = shape
    return matrix.reshape(cout, cin, kh, kw).transpose(2, 3, 1, 0)


def orthogonalize_filters(steps=3, dtype=jnp.float32, eps=NS_EPS, coefficients=NS_COEFFICIENTS,
                          batched=False, target=(), total_steps=None):
    """Each update (a 4-D HWIO kernel) replaced by `newton_schulz` of its PyTorch matrix,
    computed in `dtype` and returned in the update's own.

    batched: the matrices zero-padded to the largest (its columns rounded up to a multiple of
    16) and iterated as one batch, as cifar10-speedrun does for speed; the zeros stay zero, so
    each matrix's result is its own. target (start, end): before the normalisation, each matrix
    scaled to a target norm falling linearly from start to end over the run's `total_steps`
    (progress = optimiser steps done, counting this one, / total_steps), as cifar10-speedrun
    does: in exact arithmetic the normalisation undoes it, in half precision it changes the
    rounding. With a target the transformation counts its steps (its state)."""

    def orthogonalize(updates, count):
        leaves, tree = jax.tree.flatten(updates)
        matrices = [_torch_matrix(u).astype(dtype) for u in leaves]
        if target:
            progress = (count + 1) / total_steps
            magnitude = target[0] * (1 - progress) + target[1] * progress
            matrices = [m * (magnitude / (jnp.linalg.norm(m) + TARGET_EPS)) for m in matrices]
        if batched and matrices:
            rows = max(m.shape[0] for m in matrices)
            cols = -(-max(m.shape[1] for m in matrices) // 16) * 16
            stacked = jnp.stack([jnp.pad(m, ((0, rows - m.shape[0]), (0, cols - m.shape[1])))
                                 for m in matrices])
            result = newton_schulz(stacked, steps, eps, coefficients)
            matrices = [result[i, :m.shape[0], :m.shape[1]] for i, m in enumerate(matrices)]
        else:
            matrices = [newton_schulz(m, steps, eps, coefficients) for m in matrices]
        return jax.tree.unflatten(tree, [_flax_kernel(m, u.shape).astype(u.dtype)
                                         for m, u in zip(matrices, leaves)])

    if not target:
        return optax.stateless(lambda updates, params: orthogonalize(updates, None))

    def update(updates, state, params=None):
        return orthogonalize(updates, state.count), optax.ScaleByScheduleState(
            count=optax.safe_int32_increment(state.count))

    return optax.GradientTransformation(
        lambda params: optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32)), update)


def renormalize_filters(every=1, growth=0.0, eps=0.0, total_steps=None, learning_rate=None,
                        decay=0.0):
    """Adds to each (already lr-scaled) update `u` the original's renormalisation of the
    parameter `p` before the step, `p <- p * sqrt(out) / (||p||_F + eps)`: the new value is
    `p * s + u`, returned as the update `(p * s + u) - p`, which `optax.apply_updates` adds back
    to `p` with at most one rounding more than the original. Must come after the lr: the
    renormalisation is not scaled by it.

    every, growth: renormalise only when the steps since the last renormalisation (counting
    this one) reach every + int(growth * steps done / total_steps), as cifar10-speedrun
    (2 and 15); 1 and 0 (airbench94_muon's): at every step. decay: after the update, the new
    value times 1 - learning_rate(count) * decay (decoupled decay, cifar10-speedrun's).
    Either counts the steps (its state)."""

    def renormalized(u, p):
        scale = jnp.sqrt(jnp.asarray(p.shape[-1], p.dtype)) / (jnp.linalg.norm(p) + eps)
        return p * scale + u  # out: HWIO's O

    # A sweep gives its settings as traced values: only Python numbers can take the plain path.
    if all(isinstance(v, (int, float)) for v in (every, growth, decay)) and (every, growth,
                                                                               decay) == (1, 0, 0):
        return optax.stateless(lambda updates, params: jax.tree.map(
            lambda u, p: renormalized(u, p) - p, updates, params))

    def update(updates, state, params):
        count, last = state
        done = count + 1  # the steps done, this one counted
        now = done - last >= every + jnp.floor(growth * done / total_steps).astype(jnp.int32)
        factor = 1 - learning_rate(count) * decay  # 1.0 exactly without decay

        def new_value(u, p):
            return jnp.where(now, renormalized(u, p), p + u) * factor

        updates = jax.tree.map(lambda u, p: new_value(u, p) - p, updates, params)
        return updates, (done, jnp.where(now, done, last))

    return optax.GradientTransformation(
        lambda params: (jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32)), update)


def muon_param_label(path, param):
    """The group of one parameter (`path`: its names): airbench's stem kernel and bias as
    `airbench_param_label` says; BatchNorm biases and any other `bias` are `BIAS`; other
    4-D kernels are `FILTERS`; the rest (the head) is `HEAD`."""
    label = airbench_param_label(path)
    if label in (WHITEN_KERNEL, WHITEN_BIAS):
        return label
    if label == NORM_BIAS or str(path[-1]).lower() == "bias":
        return BIAS
    return FILTERS if param.ndim == 4 else HEAD


def muon_param_labels(params):
    """The tree of `muon_param_label`s of a params tree (`optax.partition`'s param_labels)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: muon_param_label([key_name(k) for k in path], p), params)


def muon(learning_rate=0.24, momentum=0.6, weight_decay=2e-6, whiten_bias_epochs: float = 3,
         dtype="float32", bias_lr=0.053, head_lr=0.67, *, batch_size, total_steps,
         steps_per_epoch, schedule="constant", sgd_momentum=0.85, ns_steps=3,
         ns_coefficients: tuple[float, ...] = NS_COEFFICIENTS, ns_eps=NS_EPS, ns_batched=False,
         target_magnitude: tuple[float, ...] = (), renorm_every=1, renorm_growth=0.0,
         renorm_eps=0.0, filter_decay=0.0, momentum_dtype=""):
    """airbench94_muon's optimiser, usable by any model (`muon_param_label` makes the groups):
    learning_rate   Muon's, for the 4-D kernels (per unit of the orthogonalised update)
    momentum        Muon's Nesterov momentum
    weight_decay    per example: each SGD group's coupled decay coefficient is
                    weight_decay * batch_size / its lr (the original's wd / lr; Muon has none)
    whiten_bias_epochs  epochs the whitening stem's bias trains, its lr falling to zero over
                    ceil(whiten_bias_epochs * steps_per_epoch) steps (then it is frozen)
    dtype           the run's dtype: Newton-Schulz runs in it
    bias_lr         the SGD group of the biases (`BIAS`, and the stem's bias)
    head_lr         the SGD group of the rest (`HEAD`): the recipe's 0.67 is for airbench's
                    head, whose logits are divided by 256; another model's Dense layers want
                    about 1e-3 (with bias_lr too)
    sgd_momentum    the SGD groups' Nesterov momentum
    ns_steps        Newton-Schulz iterations
    ns_coefficients the quintic's (a, b, c); ns_eps: added to the norm it normalises by
    ns_batched      the filters' updates zero-padded into one batch and iterated together
                    (cifar10-speedrun's speed trick; each result is its matrix's own)
    target_magnitude  (start, end): each update scaled to a norm falling linearly from start
                    to end over the run before the normalisation (cifar10-speedrun: 0.5012,
                    0.0786); () for none
    renorm_every, renorm_growth  renormalise the filters when the steps since the last
                    renormalisation reach renorm_every + int(renorm_growth * progress) (1 and 0:
                    every step; cifar10-speedrun: 2 and 15); renorm_eps: added to their norm
    filter_decay    per example: after the update, each filter times 1 - lr_t * filter_decay *
                    batch_size (decoupled decay; cifar10-speedrun: 1.0418e-6); 0 for none
    momentum_dtype  the momentum buffers' dtype ("" the parameters'; cifar10-speedrun keeps
                    them in half precision on the GPU)
    schedule        the run's --schedule: only "constant" (the decay is built in)
Each is a setting (--optimizer.head_lr 1e-3), but dtype, batch_size, total_steps,
steps_per_epoch and schedule, which the run gives.
    Every lr falls linearly to zero over the run's `total_steps` (the stem bias's over its
    own steps): lr_t = lr * (1 - t / total), t = 0, 1, ..., as the original sets it before each
    step. The gradients must be those of the summed loss, as the original's.
    """
    if schedule != "constant":  # it would scale the renormalisation too, which must not be
        raise ValueError(f"muon decays its learning rates itself; --schedule {schedule} would "
                         "scale its filters' renormalisation too: use --schedule constant")
    decay = weight_decay * batch_size  # the absolute decay per step at full lr (0.004)
    whiten_steps = math.ceil(whiten_bias_epochs * steps_per_epoch)

    def sgd(lr, steps):
        # Past `steps` the linear schedule holds 0: the update is exactly zero and the parameter
        # stays as it was (the original stops giving the stem bias a gradient then).
        return torch_sgd(optax.linear_schedule(lr, 0.0, steps), decay / lr, sgd_momentum)

    muon_lr = optax.linear_schedule(learning_rate, 0.0, total_steps)
    filters = optax.chain(
        optax.trace(decay=momentum, nesterov=True,  # buf = m buf + g; g + m buf
                    accumulator_dtype=jnp.dtype(momentum_dtype) if momentum_dtype else None),
        orthogonalize_filters(ns_steps, jnp.dtype(dtype), ns_eps, tuple(ns_coefficients),
                              ns_batched, tuple(target_magnitude), total_steps),
        optax.scale_by_learning_rate(muon_lr),
        renormalize_filters(renorm_every, renorm_growth, renorm_eps, total_steps, muon_lr,
                            filter_decay * batch_size),
    )
    return partition(
        {
            WHITEN_KERNEL: optax.set_to_zero(),
            WHITEN_BIAS: sgd(bias_lr, whiten_steps) if whiten_steps else optax.set_to_zero(),
            BIAS: sgd(bias_lr, total_steps),
            HEAD: sgd(head_lr, total_steps),
            FILTERS: filters,
        },
        muon_param_labels,
    )


def _muon_freezes(paths, *, whiten_bias_epochs, steps_per_epoch, **_):
    return stem_bias_frozen(paths, math.ceil(whiten_bias_epochs * steps_per_epoch))


# What `muon` stops training, and from which step (`train_state.freezing`): the stem's bias
# once its learning rate has reached zero.
muon.freezes = _muon_freezes
