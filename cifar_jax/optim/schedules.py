"""The run's learning-rate schedules (`--schedule`): a multiplier of the base rate at each
optimiser step, applied outside the optimiser (`scheduled`)."""

import jax.numpy as jnp
import optax


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
