"""The airbench94 recipe end to end on mock data (a narrow net): it trains, resumes exactly,
evaluates with test-time augmentation; and the TTA views against a plain reference."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import register_narrow_airbench
from PIL import Image

from cifar_jax import data, evaluate, predict, steps, train_state
from cifar_jax.config import REGISTRY, Config
from cifar_jax.models.airbench import whitening_kernel
from cifar_jax.run import load_state
from cifar_jax.train import train_and_evaluate


@pytest.fixture
def config(narrow):
    """70 mock images, batch 32, drop_last: 2 steps an epoch; 2.5 epochs = 5 steps."""
    return Config.for_model("airbench94_narrow", batch_size=32, eval_batch_size=32, epochs=2.5)


@pytest.fixture(scope="session")
def airbench_run(tmp_path_factory):
    """A finished 2.5-epoch airbench94 run (narrow net) on mock data: (workdir, history)."""
    workdir = str(tmp_path_factory.mktemp("airbench") / "run")
    register_narrow_airbench()
    config = Config.for_model("airbench94_narrow", batch_size=32, eval_batch_size=32, epochs=2.5)
    with tfds.testing.mock_data(num_examples=70):
        history = train_and_evaluate(config, workdir, progress=False)
    del REGISTRY["model"]["airbench94_narrow"]  # each test that reads the run registers it
    return workdir, history


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in f]


def test_recipe_trains_with_its_parts(airbench_run, narrow, mock_cifar10):
    workdir, history = airbench_run
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert "test_accuracy_tta" in history[-1] and "test_accuracy_tta" not in history[0]
    _, state, epoch = load_state(workdir)
    assert (epoch, int(state.step)) == (3, 5)  # 2 + 2 + half an epoch
    # The stem keeps the whitening filters of the training images it was built from.
    images = data.load_cifar10()["train"][0]
    np.testing.assert_allclose(state.params["whiten"]["kernel"], whitening_kernel(images[:5000]),
                               rtol=1e-5, atol=1e-6)
    # Lookahead: the model takes the average at the last step.
    for a, b in zip(jax.tree.leaves(state.ema), jax.tree.leaves(state.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    assert set(state.batch_stats["group1"]) == {"norm1", "norm2"}


def test_recipe_resumes_exactly(airbench_run, config, mock_cifar10, tmp_path, monkeypatch):
    whole, _ = airbench_run
    calls, real = [], steps.train_batches_one

    def interrupt_in_epoch_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    cut = str(tmp_path / "cut")
    monkeypatch.setattr(steps, "train_batches_one", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, cut, progress=False)
    assert len(rows(cut)) == 1
    monkeypatch.setattr(steps, "train_batches_one", real)
    train_and_evaluate(config, cut, progress=False, resume=True)
    assert rows(cut) == rows(whole)
    for a, b in zip(jax.tree.leaves(load_state(cut)[1]), jax.tree.leaves(load_state(whole)[1]),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_evaluate_reports_the_tta_accuracy_of_the_final_row(airbench_run, narrow, mock_cifar10,
                                                             capsys):
    workdir, history = airbench_run
    assert evaluate.main(["--workdir", workdir, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got == {key: history[-1][key] for key in ("epoch", "test_loss", "test_accuracy",
                                                     "test_loss_tta", "test_accuracy_tta")}


def test_tta_views_are_airbenchs():
    """Level 2 = 0.5 mean(x, mirror x) + 0.5 mean over the two 1-pixel shifts of the same."""
    rng = np.random.default_rng(0)
    images = rng.random((3, 8, 8, 3), np.float32)
    weights = rng.standard_normal((8 * 8 * 3, 4)).astype(np.float32)

    def apply(variables, x, train):  # a stand-in model: any function of the pixels
        return jnp.tanh(x.reshape(len(x), -1) @ variables)

    def plain(x):
        return np.tanh(x.reshape(len(x), -1) @ weights)

    mirror = lambda x: 0.5 * (plain(x) + plain(x[:, :, ::-1]))
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, 0:8, 0:8], padded[:, 2:10, 2:10]
    expected = {0: plain(images), 1: mirror(images),
                2: 0.5 * mirror(images) + 0.25 * (mirror(up_left) + mirror(down_right))}
    for level, want in expected.items():
        np.testing.assert_allclose(steps.tta_logits(apply, weights, images, level), want,
                                   rtol=1e-5, atol=1e-6)


def test_predict_uses_the_recipes_tta(airbench_run, narrow, tmp_path, capsys):
    workdir, _ = airbench_run
    image = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), np.uint8)
    Image.fromarray(image[0]).save(tmp_path / "a.png")
    assert predict.main(["--workdir", workdir, "--json", str(tmp_path / "a.png")]) == 0
    got = json.loads(capsys.readouterr().out)
    config, model, variables = predict.load_run(workdir)
    assert config.tta == 2
    expected = jax.nn.softmax(jax.jit(lambda v, x: steps.tta_logits(model.apply, v, x, 2))(
        variables, image / 255.0))[0]  # compiled: op by op, six views of a net take seconds
    assert got["probability"] == pytest.approx(float(expected.max()), rel=1e-5)


def test_the_stem_bias_once_frozen_costs_no_gradient_and_changes_no_number(narrow, mock_cifar10,
                                                                          tmp_path, monkeypatch):
    """Frozen after epoch 1 (2 steps): from then on the steps take no gradient for it (what
    PyTorch's requires_grad_(False) spares), and the run is the run that computed it."""
    config = Config.for_model("airbench94_narrow", batch_size=32, eval_batch_size=32, epochs=2,
                              settings={"optimizer.whiten_bias_epochs": 1})
    frozen, real = [], steps.train_batches_one

    def spy(state, *args, **kwargs):
        frozen.append(state.recipe.frozen)
        return real(state, *args, **kwargs)

    monkeypatch.setattr(steps, "train_batches_one", spy)
    train_and_evaluate(config, str(tmp_path / "frozen"), progress=False)
    assert frozen == [(), (), ("whiten/bias",), ("whiten/bias",)]  # one step a call
    monkeypatch.setattr(train_state, "freezing", lambda *args: {})
    train_and_evaluate(config, str(tmp_path / "computed"), progress=False)
    assert rows(tmp_path / "frozen") == rows(tmp_path / "computed")
    (_, a, _), (_, b, _) = load_state(tmp_path / "frozen"), load_state(tmp_path / "computed")
    # The same weights, statistics and lookahead average (the stem bias's momentum buffer is
    # not: it no longer gets the gradient, and its updates are zero either way).
    for x, y in zip(jax.tree.leaves((a.step, a.variables, a.ema)),
                    jax.tree.leaves((b.step, b.variables, b.ema)), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.params["whiten"]["bias"], 0)  # it trained in epoch 1
