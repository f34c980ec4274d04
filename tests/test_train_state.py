"""The train state keeps model state (BatchNorm statistics) apart from what the optimiser updates."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cifar_jax import data, steps, train_state


class BatchNormNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), name="conv")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="norm")(x)
        return nn.Dense(10)(nn.relu(x).mean((1, 2)))


def batch(n=16):
    rng = np.random.default_rng(0)
    return {"image": jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3)), jnp.uint8),
            "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32), "mask": jnp.ones(n)}


def test_batch_stats_follow_their_running_average_and_the_optimiser_never_sees_them():
    state = train_state.create(BatchNormNet(), optax.adam(0.1), jax.random.key(0))
    assert set(state.params) == {"conv", "norm", "Dense_0"}
    assert set(state.batch_stats["norm"]) == {"mean", "var"}
    adam = state.opt_state[0]
    assert jax.tree.structure(adam.mu) == jax.tree.structure(state.params)  # no batch_stats in it

    b = batch()
    new, _ = jax.jit(steps.train_step)(state, b, jax.random.key(1))
    conv = nn.Conv(4, (3, 3)).apply({"params": state.params["conv"]}, data.to_float(b["image"]))
    mean, var = conv.mean((0, 1, 2)), conv.var((0, 1, 2))
    # Exactly the running average (0.9 old + 0.1 batch), with no optimiser step added to it.
    np.testing.assert_allclose(new.batch_stats["norm"]["mean"], 0.1 * mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(new.batch_stats["norm"]["var"], 0.9 + 0.1 * var, rtol=1e-5)
    assert not np.allclose(new.params["conv"]["kernel"], state.params["conv"]["kernel"])
    assert int(new.step) == 1


def test_evaluation_uses_the_running_statistics():
    state = train_state.create(BatchNormNet(), optax.sgd(0.1), jax.random.key(0))
    for i in range(3):
        state, _ = jax.jit(steps.train_step)(state, batch(), jax.random.key(i))
    b = batch()
    _, predicted = steps.eval_step(state, b)
    expected = BatchNormNet().apply(state.variables, data.to_float(b["image"]), train=False)
    np.testing.assert_array_equal(predicted, expected.argmax(-1))
    in_train_mode = BatchNormNet().apply(state.variables, data.to_float(b["image"]), train=True,
                                         mutable=["batch_stats"])[0]
    assert not np.allclose(expected, in_train_mode)  # the batch's own statistics differ


def test_models_without_batch_norm_have_empty_batch_stats():
    from cifar_jax.models import CNN

    state = train_state.create(CNN(), optax.adam(1e-3), jax.random.key(0))
    assert state.batch_stats == {}
    new, _ = jax.jit(steps.train_step)(state, batch(), jax.random.key(1))
    assert new.batch_stats == {}
