"""Sweeps in one compiled program (`--sweep`): each point x seed equals its own run; the table,
plot and per-point TensorBoard runs; resume, evaluate and predict by point; bad specs. (On
several devices: test_devices.py.)"""

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import cnn_config, swept_and_own_optimiser_steps
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_extensions import BROKEN
from test_resume import interrupted_then_resumed, rows

from cifar_jax import evaluate, main, predict, programs, register_optimizer, run, steps, sweep
from cifar_jax.config import Config
from cifar_jax.registry import CONTRACTS
from cifar_jax.train import train_and_evaluate

KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def test_each_point_and_seed_equals_its_own_run(lr_sweep):
    """On one CPU device the models train in turn (`steps.train_batches_stacked`), each the
    one-model program: bit for bit its own run. The evaluation is vmapped: to rounding."""
    config, workdir, history, alone = lr_sweep
    for (lr, seed), path in alone.items():
        point = config.points().index({"learning_rate": lr})
        separate = rows(path)
        for epoch, row in enumerate(history):
            entry = row["points"][point]
            assert entry["point"] == {"learning_rate": lr}
            for key in ("train_loss", "train_accuracy"):
                assert entry["per_seed"][key][seed] == separate[epoch][key], key
            for key in ("test_loss", "test_accuracy"):
                assert entry["per_seed"][key][seed] == pytest.approx(separate[epoch][key],
                                                                     rel=1e-6, abs=1e-7), key
        mine = run.load_state(workdir, point={"learning_rate": lr}, member=seed)[1]
        theirs = run.load_state(path)[1]
        for a, b in zip(jax.tree.leaves(mine.params), jax.tree.leaves(theirs.params), strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_step_of_each_swept_optimiser_setting_equals_the_separate_one():
    """nesterov (airbench's groups) over learning rate, momentum, weight decay and bias scaler
    at once, on a tree with every group: three updates of each point as its own optimiser's."""
    sweep_values = {"learning_rate": [5.0, 11.5], "momentum": [0.8, 0.9],
                    "optimizer.weight_decay": [0.0, 0.05], "optimizer.bias_scaler": [16.0, 64.0]}
    config = Config.for_model("airbench94", sweep=sweep_values)
    rng = np.random.default_rng(0)
    params = {"whiten": {"kernel": rng.normal(size=(2, 2, 3, 4)), "bias": rng.normal(size=4)},
              "BatchNorm_0": {"bias": rng.normal(size=8)}, "Dense_0": {"kernel": rng.normal(size=(8, 3))}}
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    grads = [jax.tree.map(lambda x, i=i: jnp.sin(x * (i + 2)), params) for i in range(3)]
    for updates, _ in swept_and_own_optimiser_steps(config, params, grads):
        for mine, theirs in updates:
            for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(theirs), strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_a_swept_label_smoothing_is_the_loss_of_that_value():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(5, 10)), jnp.float32)
    labels = jnp.arange(5)
    for value in (0.0, 0.2):
        traced = jax.jit(steps.cross_entropy)(logits, labels, jnp.float32(value))
        np.testing.assert_allclose(traced, steps.cross_entropy(logits, labels, value), rtol=1e-6)


def test_rows_table_plot_and_tensorboard_runs(lr_sweep):
    _, workdir, history, _ = lr_sweep
    assert rows(workdir) == [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    final = history[-1]
    for entry in final["points"]:
        for key in KEYS:
            assert entry[key] == pytest.approx(np.mean(entry["per_seed"][key]))
            assert entry[f"{key}_std"] == pytest.approx(np.std(entry["per_seed"][key], ddof=1))
        assert {"ensemble_test_accuracy", "test_accuracy_ci95"} <= set(entry)
    assert "ensemble_test_accuracy" not in history[0]["points"][0]
    with open(os.path.join(workdir, "sweep.csv")) as f:
        table = list(csv.reader(f))
    assert table[0] == ["learning_rate", "test_accuracy", "test_accuracy_std", "ci95_low",
                        "ci95_high", "seeds"]
    for line, entry in zip(table[1:], final["points"], strict=True):
        assert [float(x) for x in line] == pytest.approx(
            [entry["point"]["learning_rate"], entry["test_accuracy"], entry["test_accuracy_std"],
             *entry["test_accuracy_ci95"], 2])
    for name in ("sweep.png", "history.png", "confusion_matrix.png"):
        with Image.open(os.path.join(workdir, name)) as image:
            assert image.format == "PNG" and image.size[0] > 300
    assert sorted(os.listdir(os.path.join(workdir, "tensorboard"))) == [
        "learning_rate=0.001", "learning_rate=0.002"]
    for i, entry in enumerate(final["points"]):
        events = EventAccumulator(os.path.join(workdir, "tensorboard", sweep.label(entry["point"])))
        events.Reload()
        accuracy = [e.value for e in events.Scalars("test/accuracy")]
        assert accuracy == pytest.approx([row["points"][i]["test_accuracy"] for row in history])
        lr = events.Scalars("train/learning_rate")[-1].value
        assert lr == pytest.approx(entry["point"]["learning_rate"])


def test_the_final_line_names_the_best_point_and_whether_it_stands_out():
    def entry(lr, mean, low, high):
        return {"point": {"learning_rate": lr}, "test_accuracy": mean, "test_accuracy_std": 0.01,
                "test_accuracy_ci95": [low, high], "per_seed": {"test_accuracy": [0, 0, 0]}}

    apart = {"points": [entry(0.001, 0.60, 0.58, 0.62), entry(0.002, 0.70, 0.68, 0.72)]}
    assert sweep.verdict(apart) == (
        "best point learning_rate=0.002: test accuracy 0.7000 ± 0.0100 (95% CI 0.6800 to 0.7200, "
        "3 seeds); the runner-up learning_rate=0.001 has 0.6000 (95% CI 0.5800 to 0.6200): the "
        "intervals do not overlap: the best point is distinguishable from it")
    close = {"points": [entry(0.001, 0.69, 0.67, 0.71), entry(0.002, 0.70, 0.68, 0.72)]}
    assert sweep.verdict(close).endswith("the intervals overlap, so the two are not "
                                         "distinguishable")
    one = {"points": [{"point": {"learning_rate": 0.1}, "test_accuracy": 0.5},
                      {"point": {"learning_rate": 0.2}, "test_accuracy": float("nan")}]}
    assert sweep.verdict(one) == (
        "best point learning_rate=0.1: test accuracy 0.5000; the runner-up learning_rate=0.2 has "
        "nan: one seed per point gives no intervals to tell them apart (use --num-seeds 2 or more)")


def test_evaluate_and_predict_take_a_point_and_a_member(lr_sweep, mock_cifar10, tmp_path, capsys):
    _, workdir, history, _ = lr_sweep
    final = history[-1]
    best = sweep.ranked(final)[0]
    assert evaluate.main(["--workdir", workdir, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["point"] == best["point"]
    assert got["test_accuracy"] == pytest.approx(best["ensemble_test_accuracy"])
    assert evaluate.main(["--workdir", workdir, "--json", "--point", "learning_rate=0.002",
                          "--member", "1"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["test_accuracy"] == pytest.approx(final["points"][1]["per_seed"]["test_accuracy"][1])
    assert evaluate.main(["--workdir", workdir, "--point", "learning_rate=0.003"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: --point learning_rate=0.003 is not in the sweep; its points: learning_rate=0.001; "
        "learning_rate=0.002")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    answers = []
    for point in ("learning_rate=0.001", "learning_rate=0.002"):
        assert predict.main(["--workdir", workdir, str(tmp_path / "x.png"), "--json",
                             "--point", point]) == 0
        answers.append(json.loads(capsys.readouterr().out)["probability"])
    assert answers[0] != answers[1]
    assert predict.main(["--workdir", workdir, str(tmp_path / "x.png"), "--point", "momentum=1"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: --point momentum: the sweep does not vary it; its points: learning_rate=0.001; "
        "learning_rate=0.002")
    assert evaluate.main(["--workdir", workdir, "--point", "learning_rate=fast"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: --point learning_rate: learning_rate must be a number, got 'fast'; its points: "
        "learning_rate=0.001; learning_rate=0.002")


def test_a_sweep_resumes_exactly(lr_sweep, mock_cifar10, tmp_path, monkeypatch, capsys):
    config, whole, _, _ = lr_sweep
    interrupted_then_resumed(config, str(tmp_path / "cut"), monkeypatch)
    assert rows(tmp_path / "cut") == rows(whole)
    capsys.readouterr()
    code = main.main(["--workdir", str(tmp_path / "cut"), "--resume", "--learning-rate", "0.1"])
    assert (code, capsys.readouterr().err.strip()) == (
        2, "error: --sweep learning_rate and --learning-rate both set learning_rate: drop one")


def test_a_point_that_diverges_is_named_and_the_others_train_on(mock_cifar10, tmp_path, capsys):
    history = train_and_evaluate(cnn_config(epochs=1, sweep={"learning_rate": [0.001, 1e9]},
                                            num_seeds=2), str(tmp_path / "run"), progress=False)
    out = capsys.readouterr().out
    assert ("note: diverged (loss above 100 x ln 10, or NaN), training on without them: "
            "learning_rate=1e+09, seed 0; learning_rate=1e+09, seed 1") in out
    good, bad = history[-1]["points"]
    assert np.isfinite(good["train_loss"]) and not np.isfinite(bad["train_loss"])
    assert f"best point learning_rate=0.001: test accuracy {good['test_accuracy']:.4f}" in \
        sweep.verdict(history[-1])


@pytest.mark.parametrize(("flags", "message"), [
    (["--sweep", "lr=0.1,0.2"], ("--sweep lr: no such setting; sweep a run's setting "
     "(learning_rate, batch_size, epochs, model, optimizer, augment, ...) or a piece's "
     "(optimizer.b2, model.width, augment.translate.pad, ...)")),
    (["--sweep", "data_dir=a,b"], ("--sweep data_dir: data_dir does not change what a run "
     "computes, or is not a setting to sweep")),
    (["--sweep", "seed=1,2"], ("--sweep seed: seeds are not swept: --num-seeds N trains seeds "
     "--seed to --seed+N-1 at every point")),
    (["--sweep", "learning_rate=0.1,-0.2"], ("--sweep learning_rate: learning_rate must be a "
     "positive number, got -0.2")),
    (["--sweep", "learning_rate=0.1,fast"], ("--sweep learning_rate: learning_rate must be a "
     "number, got 'fast'")),
    (["--sweep", "batch_size=32,6.5"], ("--sweep batch_size: batch_size must be an integer, got "
     "'6.5'")),
    (["--sweep", "model.features=16,32;32,x"], ("--sweep model.features: model.features must be "
     "an integer, got 'x'")),
    (["--sweep", "model=cnn,resnet"], ("--sweep model: unknown model 'resnet': choose one of mlp, "
     "cnn, airbench94, airbench94_muon, cifar10_speedrun, or name yours as "
     "module:attribute")),
    (["--sweep", "model=cnn,mlp", "--sweep", "model.features=8;16"], (
     "--sweep model.features: model 'mlp' (one the sweep trains) has no setting 'features'; its "
     "settings are hidden, num_classes")),
    (["--sweep", "model.dense=8,16", "--model.dense", "4"], ("--sweep model.dense and "
     "--model.dense both set model.dense: drop one")),
    (["--sweep", "momentum=0.5,0.9", "--optimizer", "sgd", "--momentum", "0.1"], (
     "--sweep optimizer.momentum and --optimizer.momentum both set optimizer.momentum: drop one")),
    (["--sweep", "optimizer.nosuch=1,2"], ("--sweep optimizer.nosuch: optimizer 'adam' has no "
     "setting 'nosuch'; it has no settings")),
    (["--sweep", "learning_rate="], ("--sweep learning_rate has no values: give them as "
     "learning_rate=V1,V2,...")),
    (["--sweep", "learning_rate=0.1,0.1"], ("--sweep learning_rate lists 0.1 twice: give each "
     "value once")),
    (["--sweep", "learning_rate=0.1", "--sweep", "learning_rate=0.2"], ("--sweep learning_rate is "
     "given twice: list all its values in one --sweep learning_rate=V1,V2,...")),
    (["--sweep", "learning_rate=0.1,0.2", "--learning-rate", "0.3"], ("--sweep learning_rate and "
     "--learning-rate both set learning_rate: drop one")),
    (["--sweep", "momentum=0.5,0.9"], ("--sweep optimizer.momentum: optimizer 'adam' has no "
     "setting 'momentum'; it has no settings")),
    (["--sweep", "model=cnn,wrong_width:Net"], ("point model=wrong_width:Net: model "
     "'wrong_width:Net' returns float32 [2, 5] for 2 images, not logits [2, 10]; expected "
     f"{CONTRACTS['model']}")),
])
def test_a_bad_sweep_is_one_line_exit_2_and_nothing_written(flags, message, tmp_path, capsys,
                                                            monkeypatch):
    (tmp_path / "wrong_width.py").write_text(BROKEN["wrong_width.py"])
    monkeypatch.syspath_prepend(str(tmp_path))
    workdir = tmp_path / "run"
    assert main.main(["--model", "cnn", "--workdir", str(workdir), *flags]) == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not workdir.exists()


def test_a_sweep_spec_that_is_not_name_equals_values_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main.main(["--sweep", "learning_rate"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "python -m cifar_jax.train: error: argument --sweep: expected NAME=V1,V2,... (e.g. "
        "learning_rate=1e-3,2e-3), got 'learning_rate' (see --help)")


def test_a_setting_the_pieces_need_as_a_python_number_makes_a_program_per_value():
    def picky(learning_rate=0.1, momentum=0.9):
        return optax.sgd(learning_rate, momentum if momentum > 0.5 else None)

    register_optimizer("picky", picky)
    config = Config.for_model("mlp", optimizer="picky", sweep={"momentum": [0.1, 0.9],
                                                               "learning_rate": [0.1, 0.2]})
    plan = programs.plan(config)
    assert [static for static, _ in plan] == [{"optimizer.momentum": 0.1},
                                              {"optimizer.momentum": 0.9}]
    assert [program.sweep for _, program in plan] == [(("learning_rate", (0.1, 0.2)),)] * 2
    assert plan[1][1].settings == {"optimizer.momentum": 0.9}
    assert sweep.describe_plan(config, plan) == (
        "sweep: 4 points x 1 seed = 4 models in 2 compiled programs of 2 (a program per "
        "optimizer.momentum; learning_rate within each)")
    # the same optimiser in Python's numbers alone: one program
    register_optimizer("smooth", lambda learning_rate=0.1, momentum=0.9: optax.sgd(
        learning_rate, momentum))
    config = Config.for_model("mlp", optimizer="smooth", sweep={"momentum": [0.1, 0.9]})
    assert programs.plan(config) == [({}, config)]
