import dataclasses
import json
import os

import numpy as np
import pytest

from cifar_jax import ops, register_model, steps, train
from cifar_jax.config import Config, ConfigError
from cifar_jax.data import CLASS_NAMES
from cifar_jax.models import CNN
from cifar_jax.registry import REGISTRY
from cifar_jax.train import train_and_evaluate

PNG = b"\x89PNG\r\n\x1a\n"


def test_run_writes_every_output(cnn_run):
    config, workdir, history = cnn_run
    assert sorted(os.listdir(workdir)) == [".lock", "checkpoints", "config.json",
                                           "confusion_matrix.png", "history.png", "metrics.jsonl",
                                           "report.txt", "tensorboard"]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert rows == history
    assert [row["epoch"] for row in rows] == [1, 2]
    for row in rows:
        assert set(row) == {"epoch", "train_loss", "train_accuracy", "test_loss",
                            "test_accuracy", "seconds"}
        assert 0 <= row["train_accuracy"] <= 1 and 0 <= row["test_accuracy"] <= 1
        assert row["train_loss"] > 0 and row["seconds"] > 0
    for plot in ("confusion_matrix.png", "history.png"):
        with open(os.path.join(workdir, plot), "rb") as f:
            assert f.read(8) == PNG
    assert Config.load(workdir) == config
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]


def test_report_lists_every_class_and_all_test_images(cnn_run):
    _, workdir, history = cnn_run
    with open(os.path.join(workdir, "report.txt")) as f:
        text = f.read()
    for name in CLASS_NAMES:
        assert f" {name} " in text
    accuracy_line = next(line for line in text.splitlines() if "accuracy" in line)
    assert accuracy_line.split()[-1] == "70"  # every mock test image, the partial batch too
    assert float(accuracy_line.split()[-2]) == pytest.approx(history[-1]["test_accuracy"], abs=1e-4)


def test_same_seed_same_metrics_and_the_second_run_compiles_nothing(mock_cifar10, tmp_path):
    config = Config.for_model("mlp", epochs=1, eval_batch_size=32)
    a = train_and_evaluate(config, str(tmp_path / "a"), progress=False)
    programs = (steps.train_batches_one, steps.eval_batches)  # what a run of one model calls
    compiled = [f._cache_size() for f in programs]
    assert min(compiled) > 0
    b = train_and_evaluate(config, str(tmp_path / "b"), progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(a) == strip(b)
    # An equal run in the same process trains and evaluates with the first one's programs
    # (the state's static parts, model, optimiser and recipe, compare equal).
    assert [f._cache_size() for f in programs] == compiled


def test_non_empty_workdir_is_refused_and_left_alone(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"workdir .* is not empty: choose a new --workdir"):
        train_and_evaluate(Config.for_model("cnn"), str(tmp_path))
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_config_defaults_follow_the_tutorial():
    mlp, cnn = Config.for_model("mlp"), Config.for_model("cnn")
    assert (mlp.optimizer, mlp.learning_rate, mlp.epochs, mlp.batch_size) == ("sgd", 0.01, 5, 32)
    assert (cnn.optimizer, cnn.learning_rate, cnn.epochs, cnn.batch_size) == ("adam", 1e-3, 10, 32)
    assert Config.for_model("mlp", optimizer="adam").learning_rate == 1e-3


@pytest.mark.parametrize("overrides, message", [
    ({"model": "resnet"}, ("unknown model 'resnet': choose one of mlp, cnn, airbench94, "
                           "airbench94_muon, cifar10_speedrun, or name yours as "
                           "module:attribute")),
    ({"optimizer": "rmsprop"}, ("unknown optimizer 'rmsprop': choose one of sgd, adam, nesterov, "
                               "muon, or name yours as module:attribute")),
    ({"epochs": 0}, "epochs must be a positive number, got 0"),
    ({"batch_size": -3}, "batch_size must be a positive integer, got -3"),
    ({"learning_rate": 0.0}, "learning_rate must be a positive number, got 0.0"),
])
def test_bad_settings_are_named(overrides, message):
    with pytest.raises(ConfigError) as error:
        Config.for_model(**overrides)
    assert str(error.value) == message


def test_a_batch_larger_than_the_data_with_drop_last_is_refused(mock_cifar10, tmp_path):
    with pytest.raises(ConfigError) as error:
        train_and_evaluate(Config.for_model("airbench94"), str(tmp_path / "run"), progress=False)
    assert str(error.value) == ("--batch-size 1024 is more than the 70 training images, and the "
                                "recipe drops partial batches: use a smaller --batch-size")
    assert not (tmp_path / "run").exists()


def test_the_plain_cnn_trains_as_its_twin_written_with_cifar_jaxs_kernel(cnn_run, mock_cifar10,
                                                                         tmp_path):
    """The CNN convolves with XLA's convolution, which the steps compute as a matmul on the CPU
    (`ops.for_backend`): the run equals, bit for bit, the same CNN written with
    `ops.conv_as_matmul`, whose program holds no XLA convolution to replace."""
    config, _, history = cnn_run
    register_model("cnn_kernel", lambda dtype: CNN(dtype=dtype, conv=ops.conv_as_matmul),
                   **REGISTRY["model"]["cnn"].recipe)
    twin = train_and_evaluate(dataclasses.replace(config, model="cnn_kernel"),
                              str(tmp_path / "twin"), progress=False)
    strip = lambda rows: [{k: v for k, v in row.items() if k != "seconds"} for row in rows]
    assert strip(twin) == strip(history)


def test_each_call_is_dispatched_before_the_one_before_is_read(monkeypatch):
    # The device never waits for the host: the loop reads a call's metrics (which waits for the
    # call) only once the next call is on its way; a stop reads every call it dispatched.
    events = []

    def train_batches(n):
        def call(state, images, labels, idx, mask, key, epoch):
            events.append(("call", int(idx[0, 0, 0])))
            return state + 1, {"first_diverged": np.full(n, -1), "start": int(idx[0, 0, 0])}
        return call

    monkeypatch.setattr(steps, "train_batches_stacked", train_batches)
    monkeypatch.setattr(train.jax, "device_get",
                        lambda metrics: events.append(("read", metrics["start"])) or metrics)
    idx = np.arange(40).reshape(1, 40, 1)  # 40 steps: 20 calls of 2
    state, chunks, done = train.train_epoch(0, None, None, idx, idx, None, 1, "epoch 1", False)
    starts = list(range(0, 40, 2))
    assert events == [("call", 0), *[e for k in starts[1:] for e in (("call", k), ("read", k - 2))],
                      ("read", 38)]
    assert (state, [chunk["start"] for chunk in chunks], done) == (20, starts, 40)

    class StopAfterThreeCalls:
        def __bool__(self):
            return len(events) >= 4  # call 0, call 2, read 0, call 4
    events.clear()
    state, chunks, done = train.train_epoch(0, None, None, idx, idx, None, 1, "epoch 1", False,
                                            stop=StopAfterThreeCalls())
    assert events == [("call", 0), ("call", 2), ("read", 0), ("call", 4), ("read", 2),
                      ("read", 4)]
    assert (state, len(chunks), done) == (3, 3, 6)
