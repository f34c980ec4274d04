"""airbench94's lookahead (KellerJordan/cifar10-airbench, legacy/airbench94.py,
`LookaheadState`): every 5 steps, params <- ema <- lerp(ema, params); at the end, params <- ema.
The train step calls `lookahead_step` after the optimiser when a recipe asks for it."""

import jax
import jax.numpy as jnp

# # The original keeps `ema`, a copy of the whole state_dict (parameters and BatchNorm running
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
