import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from cifar_jax import data, steps, train_state
from cifar_jax.config import Config
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


def test_a_stack_of_one_trains_and_evaluates_as_its_model_alone():
    """A single run is a stack of one (`stack.py`): its state, each epoch's training and its
    evaluation are those of the model alone, bit for bit, the model axis only put on top."""
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (40, 32, 32, 3)), jnp.uint8)
    labels = jnp.asarray(rng.integers(0, 10, 40), jnp.int32)
    idx, mask = data.batch_indices(40, 16, jax.random.key(3))
    config = Config.for_model("cnn", batch_size=16)
    alone = train_state.from_config(config, KEY, n_train=40)
    one = train_state.from_config(config, KEY[None], n_train=40)
    alone, metrics = steps.train_batches(alone, images, labels, idx, mask, KEY, 0)
    one, one_metrics = steps.train_batches_stacked(1)(one, images, labels, idx[None], mask[None],
                                                      KEY[None], 0)
    evaluated = steps.eval_batches(alone, images, labels, idx, mask)
    one_evaluated = steps.eval_batches(one, images, labels, idx, mask)
    for a, b in zip(jax.tree.leaves((alone, metrics, evaluated)),
                    jax.tree.leaves((one, one_metrics, one_evaluated))):
        assert b.shape == (1, *a.shape)
        np.testing.assert_array_equal(b[0], a)


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


def speedrun_tta(logits_of, images, quantile=0.25):
    """cifar10-speedrun's `infer(..., tta_level=2)` (cifar10_speedrun.py at 5cd49b1) in NumPy,
    NHWC: plain logits for all; the int(n x 0.25) least confident (lowest max softmax) get the
    mean logits of 6 views: the images, them cropped from a 1-pixel reflect padding at the
    top-left and the bottom-right, and the three mirrored."""
    plain = logits_of(images)
    probs = np.exp(plain - plain.max(1, keepdims=True))
    confidence = (probs / probs.sum(1, keepdims=True)).max(1)
    uncertain = np.argsort(confidence, kind="stable")[:int(len(images) * quantile)]
    batch = images[uncertain]
    padded = np.pad(batch, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    views = [batch, padded[:, 0:32, 0:32], padded[:, 2:34, 2:34]]
    views += [v[:, :, ::-1] for v in views]
    final = plain.copy()
    final[uncertain] = np.mean([logits_of(v) for v in views], axis=0)
    return final


def test_selective_tta_is_cifar10_speedruns_in_one_call_and_over_batches():
    state = new_state()
    images, labels = fixed_batch(10, seed=3)["image"], fixed_batch(10, seed=3)["label"]
    logits_of = lambda x: np.asarray(state.apply_fn(state.variables, data.to_float(x)))
    ref = speedrun_tta(logits_of, np.asarray(images))
    ours = steps.tta_logits(state.apply_fn, state.variables, data.to_float(images), steps.SELECTIVE)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)
    assert (np.abs(ours - logits_of(images)).max(1) > 0).sum() == 2  # int(10 x 0.25) changed
    # batched (3 batches of 4, the last padded), choosing over the whole set: the same logits
    idx, mask = data.batch_indices(10, 4)
    sums, predicted = steps.eval_batches(state, images, labels, idx, mask, tta=steps.SELECTIVE)
    real = np.asarray(mask).reshape(-1) > 0
    np.testing.assert_array_equal(np.asarray(predicted).reshape(-1)[real], ref.argmax(1))
    expected = optax.softmax_cross_entropy_with_integer_labels(ref, np.asarray(labels)).sum()
    assert float(sums["count"]) == 10
    np.testing.assert_allclose(float(sums["loss_sum"]), expected, rtol=1e-5)
    assert float(sums["correct"]) == (ref.argmax(1) == np.asarray(labels)).sum()


def test_selective_tta_of_n_models_and_of_their_ensemble():
    """Each model chooses its own least confident images; the ensemble averages the softmaxes
    of each model's selective logits."""
    tx = optax.adam(1e-3)  # one: a stack's static parts are its members' alike
    members = [train_state.create(CNN(), tx, jax.random.key(k)) for k in (0, 1)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *members)
    images, labels = fixed_batch(10, seed=4)["image"], fixed_batch(10, seed=4)["label"]
    idx, mask = data.batch_indices(10, 4)
    real = np.asarray(mask).reshape(-1) > 0
    logits = [steps.tta_logits(m.apply_fn, m.variables, data.to_float(images), steps.SELECTIVE)
              for m in members]
    _, predicted = steps.eval_batches(stacked, images, labels, idx, mask, tta=steps.SELECTIVE)
    for i in range(2):
        np.testing.assert_array_equal(np.asarray(predicted[i]).reshape(-1)[real],
                                      np.argmax(logits[i], 1))
    _, ensemble = steps.ensemble_batches(stacked, images, labels, idx, mask, tta=steps.SELECTIVE)
    probs = np.mean([jax.nn.softmax(x) for x in logits], axis=0)
    np.testing.assert_array_equal(np.asarray(ensemble).reshape(-1)[real], probs.argmax(1))
