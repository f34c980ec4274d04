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


def test_a_frozen_parameter_gets_no_gradient_and_the_rest_train_as_before():
    state = train_state.create(BatchNormNet(), optax.sgd(0.1), jax.random.key(0))
    frozen = state.replace(recipe=state.recipe._replace(frozen=("Dense_0/bias",)))
    step = jax.jit(steps.train_step)
    new, metrics = step(state, batch(), jax.random.key(1))
    new_frozen, metrics_frozen = step(frozen, batch(), jax.random.key(1))
    bias = state.params["Dense_0"]["bias"]
    assert not np.array_equal(new.params["Dense_0"]["bias"], bias)  # sgd moves it when it can
    np.testing.assert_array_equal(new_frozen.params["Dense_0"]["bias"], bias)
    for path in (("conv", "kernel"), ("conv", "bias"), ("norm", "bias"), ("Dense_0", "kernel")):
        np.testing.assert_array_equal(new_frozen.params[path[0]][path[1]],
                                      new.params[path[0]][path[1]])
    assert jax.tree.map(np.asarray, metrics_frozen) == jax.tree.map(np.asarray, metrics)


def test_freezing_asks_the_optimiser_which_parameters_it_stops_training_and_when():
    import cifar_jax.recipes  # noqa: F401  (registers the recipes)
    from cifar_jax.config import Config

    def paths(model):
        state = train_state.from_config(Config.for_model(model), jax.random.key(0))
        return state.params

    airbench = paths("airbench94")
    # airbench94: 48 steps an epoch (50,000 // 1024), the stem's bias trains 3 epochs
    assert train_state.freezing(Config.for_model("airbench94"), 50_000, airbench) == {
        "whiten/bias": 144}
    two = Config.for_model("airbench94", settings={"optimizer.whiten_bias_epochs": 2})
    assert train_state.freezing(two, 50_000, airbench) == {"whiten/bias": 96}
    # airbench94_muon: 25 steps an epoch; its lr reaches zero at step ceil(3 x 25)
    assert train_state.freezing(Config.for_model("airbench94_muon"), 50_000,
                                paths("airbench94_muon")) == {"whiten/bias": 75}
    # a sweep: from the last point's step; an optimiser that freezes nothing: {}
    swept = Config.for_model("airbench94", sweep={"optimizer.whiten_bias_epochs": [1.0, 2.0]})
    assert train_state.freezing(swept, 50_000, airbench) == {"whiten/bias": 96}
    assert train_state.freezing(Config.for_model("cnn"), 50_000, paths("cnn")) == {}
