"""Many seeds in one compiled run (`--num-seeds`): each model equals its own run; the rows give
mean, std, per-seed values and a confidence interval; resume, predict and evaluate work."""

import json

import jax
import numpy as np
import pytest
from PIL import Image
from test_resume import interrupted_then_resumed, rows

from cifar_jax import evaluate, predict, run, stack, train_state

KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


def test_each_model_equals_its_own_run(cnn_run, two_seeds):
    _, workdir, history, alone = two_seeds
    separate = [rows(cnn_run[1]), rows(alone)]
    for epoch, row in enumerate(history):
        for key in KEYS:  # vmapped matmuls may round differently in the last bits
            assert row["per_seed"][key] == pytest.approx(
                [separate[i][epoch][key] for i in range(2)], rel=1e-6, abs=1e-7), key
    stacked = run.load_state(workdir)[1]
    for i, other in enumerate((cnn_run[1], alone)):
        mine = train_state.member(stacked, i)
        theirs = run.load_state(other)[1]
        for a, b in zip(jax.tree.leaves(mine.variables), jax.tree.leaves(theirs.variables),
                        strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_rows_hold_mean_std_per_seed_and_the_final_ensemble_and_interval(two_seeds):
    _, workdir, history, _ = two_seeds
    assert rows(workdir) == [{k: v for k, v in row.items() if k != "seconds"} for row in history]
    for row in history:
        for key in KEYS:
            values = row["per_seed"][key]
            assert row[key] == pytest.approx(np.mean(values))
            assert row[f"{key}_std"] == pytest.approx(np.std(values, ddof=1))
    final = history[-1]
    assert {"ensemble_test_loss", "ensemble_test_accuracy", "test_accuracy_ci95"} <= set(final)
    assert "ensemble_test_accuracy" not in history[0]
    low, high = final["test_accuracy_ci95"]
    half = 12.706205 * final["test_accuracy_std"] / np.sqrt(2)  # t(0.975, 1 degree of freedom)
    assert (low, high) == pytest.approx((max(final["test_accuracy"] - half, 0),
                                         min(final["test_accuracy"] + half, 1)))


def test_confidence_interval_by_hand():
    low, high = stack.confidence_interval([0.93, 0.94, 0.95, 0.94])
    half = 3.182446 * np.std([0.93, 0.94, 0.95, 0.94], ddof=1) / 2  # t(0.975, 3) * s / sqrt(4)
    assert (low, high) == pytest.approx((0.94 - half, 0.94 + half))
    # an accuracy's interval stays within [0, 1]
    assert stack.confidence_interval([0.2, 0.3]) == (0.0, pytest.approx(0.25 + 12.706205 * 0.05))
    assert stack.confidence_interval([0.96, 0.99]) == (pytest.approx(0.975 - 12.706205 * 0.015),
                                                        1.0)


def test_the_ensemble_is_the_mean_of_the_softmaxes(two_seeds, mock_cifar10):
    workdir = two_seeds[1]
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), np.uint8)
    _, model, variables = predict.load_run(workdir)
    members = [predict.predict_proba(model, predict.load_run(workdir, i)[2], images)
               for i in range(2)]
    np.testing.assert_allclose(predict.predict_proba(model, variables, images, stacked=True),
                               np.mean(members, axis=0), rtol=1e-5, atol=1e-7)


def test_evaluate_gives_the_ensemble_or_one_member(two_seeds, mock_cifar10, capsys):
    _, workdir, history, _ = two_seeds
    assert evaluate.main(["--workdir", workdir, "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["test_accuracy"] == pytest.approx(history[-1]["ensemble_test_accuracy"])
    assert got["test_loss"] == pytest.approx(history[-1]["ensemble_test_loss"])
    assert evaluate.main(["--workdir", workdir, "--json", "--member", "1"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["test_accuracy"] == pytest.approx(history[-1]["per_seed"]["test_accuracy"][1])
    assert evaluate.main(["--workdir", workdir, "--member", "2"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: --member 2 is not in the run: it trained 2 models (seeds 0 to 1); choose 0 to 1")


def test_predict_uses_the_ensemble_and_member_picks_one(two_seeds, tmp_path, capsys):
    _, workdir, _, _ = two_seeds
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.png")
    assert predict.main(["--workdir", workdir, str(tmp_path / "x.png"), "--json"]) == 0
    ensemble = json.loads(capsys.readouterr().out)
    assert predict.main(["--workdir", workdir, str(tmp_path / "x.png"), "--json", "--member",
                         "0"]) == 0
    member = json.loads(capsys.readouterr().out)
    assert ensemble["probability"] != member["probability"]


def test_a_multi_seed_run_resumes_exactly(two_seeds, mock_cifar10, tmp_path, monkeypatch):
    config, whole, _, _ = two_seeds
    interrupted_then_resumed(config, str(tmp_path / "cut"), monkeypatch)
    assert rows(tmp_path / "cut") == rows(whole)
