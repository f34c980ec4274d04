"""The cifar10_speedrun recipe (`cifar_jax/recipes/cifar10_speedrun.py`): its settings and run
length, and short runs of it (narrow) on mock data: two seeds and a sweep of one of its numbers
in one program, resumed exactly, with its colour jitter and selective test-time augmentation.
Each of its pieces is tested against the original in test_muon.py, test_augment.py and
test_steps.py."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import swept_and_own_optimiser_steps
from test_resume import interrupted_then_resumed, rows

from cifar_jax import register_model, train_state
from cifar_jax.config import Config
from cifar_jax.models.airbench import AirbenchMuonNet
from cifar_jax.registry import REGISTRY
from cifar_jax.train import train_and_evaluate


def test_the_recipe_and_its_run_length():
    config = Config.for_model("cifar10_speedrun")
    assert (config.optimizer, config.learning_rate, config.epochs, config.batch_size,
            config.drop_last, config.reduction, config.tta) == (
        "muon", 0.205, 7.59, 1536, True, "sum", 3)
    assert config.augmentations == ("alternating_flip", "translate", "colour_jitter")
    assert train_state.run_length(config, 50_000) == (32, 243)  # ceil(7.59 x 32)
    assert math.ceil(config.settings["optimizer.whiten_bias_epochs"] * 32) == 7
    model = train_state.build_model(config)
    assert (model.activation, model.batchnorm_momentum, model.whiten_images,
            model.whiten_method, model.scaling_factor) == ("silu", 0.5566, 960, "svd", 1 / 256)


def narrow_speedrun(dtype):
    """The recipe's network, narrow, so that a test compiles in seconds."""
    return AirbenchMuonNet(widths=(16, 32, 32), scaling_factor=1 / 32, dtype=dtype)


@pytest.fixture
def narrow(mock_cifar10):
    recipe = REGISTRY["model"]["cifar10_speedrun"].recipe
    register_model("cifar10_speedrun_narrow", narrow_speedrun, **recipe)
    yield lambda **overrides: Config.for_model(
        "cifar10_speedrun_narrow",
        **{"batch_size": 32, "eval_batch_size": 32, **overrides})
    del REGISTRY["model"]["cifar10_speedrun_narrow"]


def test_two_seeds_and_a_sweep_in_one_program_resume_exactly(narrow, tmp_path, monkeypatch):
    # 3 epochs of 2 steps: the cut falls at the 5th compiled call, in epoch 3
    config = narrow(num_seeds=2, epochs=3, sweep={"learning_rate": [0.205, 0.1]})
    whole = train_and_evaluate(config, str(tmp_path / "whole"), progress=False)
    assert [row["epoch"] for row in whole] == [1, 2, 3]
    for entry in whole[-1]["points"]:  # the final row: selective TTA's figures, every model's
        assert len(entry["per_seed"]["test_accuracy_tta"]) == 2
        assert all(math.isfinite(loss) for loss in entry["per_seed"]["train_loss"])
    first = [entry["per_seed"]["train_loss"] for entry in whole[0]["points"]]
    assert first[0][0] != first[0][1] and first[0][1] != first[1][1]
    interrupted_then_resumed(config, str(tmp_path / "cut"), monkeypatch)
    assert rows(tmp_path / "cut") == rows(tmp_path / "whole")


def test_a_sweep_of_its_muon_settings_steps_as_each_points_own_optimiser():
    """The filters' decoupled decay and the renormalisation cadence, swept in one program: five
    updates of every point equal those of the optimiser built with its values."""
    config = Config.for_model("cifar10_speedrun", sweep={
        "optimizer.filter_decay": [1.0418e-6, 1e-3], "optimizer.renorm_growth": [15.0, 400.0]})
    rng = np.random.default_rng(0)
    params = {"whiten": {"kernel": rng.normal(size=(2, 2, 3, 4)), "bias": rng.normal(size=4)},
              "group1": {"conv1": {"kernel": rng.normal(size=(3, 3, 4, 8))},
                         "norm1": {"bias": rng.normal(size=8)}},
              "head": {"kernel": rng.normal(size=(8, 10))}}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    grads = [jax.tree.map(lambda x, i=i: jnp.cos(x * (i + 2)), params) for i in range(5)]
    finals = []
    for _, (mine, theirs) in swept_and_own_optimiser_steps(config, params, grads):
        for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        finals.append(mine["group1"]["conv1"]["kernel"])
    assert len({np.asarray(k).tobytes() for k in finals}) == 4  # every point steps its own way
