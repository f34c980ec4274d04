import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cifar_jax import data, steps
from cifar_jax import state as train_state
from cifar_jax.models import CNN, MLP


def fixed_batch(n=32, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.integers(0, 256, (n, 32, 32, 3)), jnp.uint8),
            "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32),
            "mask": jnp.ones(n, jnp.float32)}


def new_state(model=None, optimizer="adam", lr=1e-3):
    return train_state.create(model or CNN(), getattr(optax, optimizer)(lr), jax.random.key(0))


KEY = jax.random.key(7)


@pytest.mark.parametrize("model, optimizer, lr", [(CNN(), "adam", 1e-3), (MLP(), "sgd", 0.01)])
def test_train_step_lowers_the_loss_on_a_fixed_batch(model, optimizer, lr):
    state, batch = new_state(model, optimizer, lr), fixed_batch()
    step = jax.jit(steps.train_step)
    losses = []
    for _ in range(30):
        state, metrics = step(state, batch, KEY)
        losses.append(float(metrics["loss_sum"] / metrics["count"]))
    assert int(state.step) == 30
    assert losses[-1] < 0.5 * losses[0]


def test_padded_partial_batch_trains_like_the_short_batch():
    batch = fixed_batch(16)
    padded = {"image": jnp.concatenate([batch["image"], jnp.zeros_like(batch["image"])]),
              "label": jnp.concatenate([batch["label"], jnp.zeros_like(batch["label"])]),
              "mask": jnp.concatenate([jnp.ones(16), jnp.zeros(16)])}
    step = jax.jit(steps.train_step)  # SGD: the update is the gradient itself, nothing magnifies
    short, m_short = step(new_state(optimizer="sgd", lr=0.01), batch, KEY)
    full, m_full = step(new_state(optimizer="sgd", lr=0.01), padded, KEY)
    assert float(m_full["count"]) == 16
    np.testing.assert_allclose(float(m_full["loss_sum"]), float(m_short["loss_sum"]), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(full.params), jax.tree.leaves(short.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_train_batches_scan_equals_a_python_loop_of_train_step():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (40, 32, 32, 3)), jnp.uint8)
    labels = jnp.asarray(rng.integers(0, 10, 40), jnp.int32)
    idx, mask = data.batch_indices(40, 16, jax.random.key(3))
    scanned, metrics = steps.train_batches(new_state(), images, labels, idx, mask, KEY)
    looped, step = new_state(), jax.jit(steps.train_step)
    for i, m in zip(idx, mask):
        looped, _ = step(looped, {"image": images[i], "label": labels[i], "mask": m},
                         jax.random.fold_in(KEY, looped.step))
    assert (float(metrics["count"]), int(metrics["first_diverged"])) == (40, -1)
    for a, b in zip(jax.tree.leaves(scanned.params), jax.tree.leaves(looped.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)  # Adam magnifies reassociation


def test_eval_batches_counts_every_example_once():
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (50, 32, 32, 3)), jnp.uint8)
    labels = jnp.asarray(rng.integers(0, 10, 50), jnp.int32)
    fresh = new_state()
    idx, mask = data.batch_indices(50, 20)
    metrics, predictions = steps.eval_batches(fresh, images, labels, idx, mask)
    expected = fresh.apply_fn(fresh.variables, data.to_float(images)).argmax(-1)
    np.testing.assert_array_equal(np.asarray(predictions).reshape(-1)[:50], expected)
    summary = steps.summarise(metrics)
    assert summary["accuracy"] == pytest.approx(float((expected == labels).mean()))


def test_summarise_takes_a_list_of_stacked_chunks():
    """Per-step sums stacked, as the loops returned them before (a stopped run's saved epoch)."""
    chunk = {"loss_sum": np.array([2.0, 4.0]), "correct": np.array([1.0, 3.0]),
             "count": np.array([4.0, 4.0])}
    assert steps.summarise([chunk, chunk]) == {"loss": 0.75, "accuracy": 0.5}


def test_a_loops_sums_are_the_float64_sums_of_its_steps():
    """The loops add their steps' sums in their carry (`steps._summed`), the loss's rounding
    kept apart: the float64 sum of 1,563 float32 batch sums of the CNN's size, as a host sum."""
    values = np.random.default_rng(0).uniform(30, 60, 1563).astype(np.float32)

    @jax.jit
    def loop(values):
        def body(sums, x):
            return steps._summed(sums, {"loss_sum": x, "correct": x * 0, "count": x * 0 + 32}), None
        return jax.lax.scan(body, steps._no_sums(), values)[0]

    sums = loop(values)
    exact = np.sum(values, dtype=np.float64)
    assert abs(steps.summarise(sums)["loss"] * 32 * 1563 - exact) <= 1e-12 * exact
    assert abs(float(sums["loss_sum"]) - exact) > 1e-9 * exact  # float32 alone would not do
