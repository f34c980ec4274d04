"""airbench94's optimiser (KellerJordan/cifar10-airbench, legacy/airbench94.py, `main()`):
Nesterov SGD with coupled weight decay over its parameter groups, a faithful port in Optax.
`nesterov` is it in the recipe's own units, as `--optimizer nesterov` names it.

    airbench_param_label(s)  the groups: the whitening stem's kernel (never trained) and bias
                             (trained for the first epochs), BatchNorm biases, the rest
    airbench_coefficients    the PyTorch-form lr and decay the original derives
    airbench_sgd             torch.optim.SGD(nesterov=True) over those groups
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from cifar_jax.optim.sgd import key_name, partition, torch_sgd

# The labels `airbench_param_labels` gives, i.e. the groups `airbench_sgd` optimises apart.
WHITEN_KERNEL = "whiten_kernel"  # the whitening stem's filters: fixed, never trained
WHITEN_BIAS = "whiten_bias"  # the stem's bias: trained for the first epochs only
NORM_BIAS = "norm_bias"  # BatchNorm biases: 64x the learning rate, same absolute decay
OTHER = "other"  # everything else: the convolutions and the head


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
        lambda path, _: airbench_param_label([key_name(key) for key in path]), params
    )


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
    return partition(
        {
            WHITEN_KERNEL: optax.set_to_zero(),
            WHITEN_BIAS: optax.chain(
                torch_sgd(coef.lr, coef.weight_decay / coef.lr, momentum), until_frozen),
            NORM_BIAS: torch_sgd(coef.lr_biases, coef.weight_decay / coef.lr_biases, momentum),
            OTHER: torch_sgd(coef.lr, coef.weight_decay / coef.lr, momentum),
        },
        airbench_param_labels,
    )


def nesterov(learning_rate=11.5, momentum=0.85, weight_decay=0.0153, bias_scaler=64.0,
             whiten_bias_epochs: float = 3, *, batch_size, steps_per_epoch):
    """airbench's optimiser (`airbench_sgd`) in its own units:
    learning_rate   per 1024 examples of the summed loss, decoupled from the momentum
    momentum        Nesterov momentum
    weight_decay    per 1024 examples, decoupled from the learning rate
    bias_scaler     BatchNorm biases learn this many times faster
    whiten_bias_epochs  epochs the whitening stem's bias trains (then it is frozen)
    """
    return airbench_sgd(lr=learning_rate, momentum=momentum, weight_decay=weight_decay,
                        batch_size=batch_size, bias_scaler=bias_scaler,
                        whiten_bias_steps=round(whiten_bias_epochs * steps_per_epoch))


def stem_bias_frozen(paths, steps):
    """{path: `steps`} for the parameter paths ("whiten/bias") among `paths` that
    `airbench_param_label` calls `WHITEN_BIAS`: what an optimiser's `freezes` returns when
    the stem's bias gets no update from (0-based) step `steps` on."""
    return {path: steps for path in paths
            if airbench_param_label(path.split("/")) == WHITEN_BIAS}


def _nesterov_freezes(paths, *, whiten_bias_epochs, steps_per_epoch, **_):
    return stem_bias_frozen(paths, round(whiten_bias_epochs * steps_per_epoch))


# What `nesterov` stops training, and from which step (`train_state.freezing`).
nesterov.freezes = _nesterov_freezes
