"""A Flax NNX model, written as Flax's docs write one (the MNIST tutorial's CNN: nnx.Conv,
BatchNorm, Dropout, avg_pool; `model.train()` / `model.eval()`), from a module outside the
package: its settings, the same computation as the NNX module run by hand, and a run of it."""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import MOCK_EXAMPLES
from flax import nnx
from test_cli import main as cli

from cifar_jax import evaluate, main, models, train_state
from cifar_jax.config import Config
from cifar_jax.registry import settings_of

NNX_NETS = '''
from functools import partial

from flax import nnx
from test_cli import main as cli


class CNN(nnx.Module):
    def __init__(self, width: int = 32, dropout: float = 0.025, *, dtype=None, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(3, width, kernel_size=(3, 3), dtype=dtype, rngs=rngs)
        self.batch_norm1 = nnx.BatchNorm(width, dtype=dtype, rngs=rngs)
        self.dropout1 = nnx.Dropout(rate=dropout, rngs=rngs)
        self.conv2 = nnx.Conv(width, 2 * width, kernel_size=(3, 3), dtype=dtype, rngs=rngs)
        self.batch_norm2 = nnx.BatchNorm(2 * width, dtype=dtype, rngs=rngs)
        self.avg_pool = partial(nnx.avg_pool, window_shape=(2, 2), strides=(2, 2))
        self.linear1 = nnx.Linear(2 * width * 8 * 8, 64, dtype=dtype, rngs=rngs)
        self.dropout2 = nnx.Dropout(rate=dropout, rngs=rngs)
        self.linear2 = nnx.Linear(64, 10, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = self.avg_pool(nnx.relu(self.batch_norm1(self.dropout1(self.conv1(x)))))
        x = self.avg_pool(nnx.relu(self.batch_norm2(self.conv2(x))))
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.dropout2(self.linear1(x)))
        return self.linear2(x).astype("float32")


class Zeros(nnx.Module):  # draws nothing, so takes no rngs
    def __init__(self):
        self.w = nnx.Param(nnx.initializers.zeros(None, (3072, 10)))

    def __call__(self, x):
        return x.reshape(len(x), -1) @ self.w
'''


@pytest.fixture
def nnxnets(tmp_path, monkeypatch):
    (tmp_path / "nnxnets.py").write_text(NNX_NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield __import__("nnxnets")
    sys.modules.pop("nnxnets", None)


def test_its_keywords_are_its_settings_and_the_run_gives_dtype_and_rngs(nnxnets, capsys):
    assert list(settings_of("model", nnxnets.CNN)) == ["width", "dropout"]
    code, out, _ = cli(capsys, "--model", "nnxnets:CNN", "--model.width", "8", "--help")
    assert code == 0 and "--model.width INT     an integer (default: 32; this run: 8)" in out
    model = models.build("nnxnets:CNN", "bfloat16", {"width": 8})
    assert dict(model.kwargs) == {"dtype": jnp.bfloat16, "width": 8}
    assert hash(model) == hash(models.build("nnxnets:CNN", "bfloat16", {"width": 8}))
    zeros = train_state._init_variables(models.build("nnxnets:Zeros"), jax.random.key(0))
    np.testing.assert_array_equal(zeros["params"]["w"], np.zeros((3072, 10)))


def test_it_computes_what_the_nnx_module_computes_by_hand(nnxnets):
    key, images = jax.random.key(3), jax.random.uniform(jax.random.key(4), (4, 32, 32, 3))
    model = models.build("nnxnets:CNN", settings={"width": 8, "dropout": 0.0})
    variables = train_state._init_variables(model, key)
    by_hand = nnxnets.CNN(width=8, dropout=0.0, rngs=nnx.Rngs(0))
    state = nnx.state(by_hand, nnx.Param, nnx.BatchStat)
    assert jax.tree.structure(variables) == jax.tree.structure(  # the module's own layout
        {"params": nnx.to_pure_dict(state[0]), "batch_stats": nnx.to_pure_dict(state[1])})
    for part, collection in zip(state, ("params", "batch_stats")):
        nnx.replace_by_pure_dict(part, variables[collection])
    nnx.update(by_hand, *state)  # the module by hand, with the run's initial variables
    train_logits, updates = model.apply(variables, images, train=True,
                                        rngs={"dropout": jax.random.key(0)},
                                        mutable=["batch_stats"])
    by_hand.train()
    np.testing.assert_array_equal(train_logits, by_hand(images))
    np.testing.assert_array_equal(updates["batch_stats"]["batch_norm1"]["mean"],
                                  by_hand.batch_norm1.mean.get_value())
    by_hand.eval()
    np.testing.assert_array_equal(model.apply({**variables, **updates}, images, train=False),
                                  by_hand(images))
    # dropout draws from the step's key, a new mask for each
    dropping = models.build("nnxnets:CNN", settings={"width": 8, "dropout": 0.5})
    masks = [dropping.apply(variables, images, train=True, rngs={"dropout": jax.random.key(k)},
                            mutable=["batch_stats"])[0] for k in (0, 0, 1)]
    np.testing.assert_array_equal(masks[0], masks[1])
    assert not np.array_equal(masks[0], masks[2])


def test_two_seeds_of_it_train_and_evaluate_again_from_their_checkpoint(nnxnets, tmp_path,
                                                                       capsys):
    run = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        assert main.main(["--model", "nnxnets:CNN", "--model.width", "4", "--num-seeds", "2",
                          "--epochs", "1", "--batch-size", "64", "--eval-batch-size", "64",
                          "--workdir", run, "--no-progress"]) == 0
        row = json.loads(open(f"{run}/metrics.jsonl").read().splitlines()[-1])
        capsys.readouterr()
        assert evaluate.main(["--workdir", run, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == row["ensemble_test_accuracy"]
    assert row["per_seed"]["train_loss"][0] != row["per_seed"]["train_loss"][1]
    assert json.loads(open(f"{run}/config.json").read())["model"] == "nnxnets:CNN"
    assert Config.load(run).settings_for("model") == {"width": 4}
