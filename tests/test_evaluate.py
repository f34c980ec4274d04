"""`python -m cifar_jax.evaluate` and the TensorBoard events of a run, against its metrics.jsonl."""

import json
import os
import shutil

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar_jax import evaluate, log
from cifar_jax.train import train_and_evaluate


def evaluate_json(capsys, *args):
    code = evaluate.main([*args, "--json"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    return json.loads(out)


def test_evaluate_agrees_exactly_with_the_runs_metrics(cnn_run, mock_cifar10, capsys, tmp_path):
    _, workdir, history = cnn_run
    for args, row in ((["--workdir", workdir], history[-1]),
                      (["--workdir", workdir, "--checkpoint", "1"], history[0])):
        assert evaluate_json(capsys, *args) == {
            "epoch": row["epoch"], "test_loss": row["test_loss"],
            "test_accuracy": row["test_accuracy"]}
    out = tmp_path / "reports"
    assert evaluate.main(["--workdir", workdir, "--out", str(out)]) == 0
    assert sorted(os.listdir(out)) == ["confusion_matrix.png", "report.txt"]
    with open(out / "report.txt") as f, open(os.path.join(workdir, "report.txt")) as g:
        assert f.read() == g.read()  # the final epoch's report, as training wrote it
    line = capsys.readouterr().out.strip()
    assert line == (f"epoch 2: test loss {history[-1]['test_loss']:.4f} accuracy "
                    f"{history[-1]['test_accuracy']:.4f} (70 images); reports in {out}")


def test_evaluate_errors_are_one_line(cnn_run, mock_cifar10, capsys, tmp_path):
    _, workdir, _ = cnn_run
    assert evaluate.main(["--workdir", workdir, "--checkpoint", "7"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: no checkpoint of epoch 7 in {os.path.join(workdir, 'checkpoints')}: "
        "choose one of 1, 2")
    assert evaluate.main(["--workdir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path} holds no cifar_jax run (no config.json): "
        "pass the --workdir of a `python -m cifar_jax.train` run")
    (tmp_path / "report.txt").write_text("mine")
    assert evaluate.main(["--workdir", workdir, "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {tmp_path} already holds report.txt: choose another --out, nothing was written")
    assert sorted(os.listdir(tmp_path)) == ["report.txt"]


def test_a_damaged_checkpoint_asked_for_is_one_line(damaged_run, mock_cifar10, capsys):
    workdir, newest = damaged_run  # without --checkpoint, the one before is used (test_reliability)
    assert evaluate.main(["--workdir", workdir, "--checkpoint", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: checkpoint {newest} cannot be read (")
    assert err.endswith("): choose another --checkpoint") and "\n" not in err


def scalars(workdir):
    """{tag: [(epoch, value), ...]} as TensorBoard reads the run's events."""
    events = EventAccumulator(os.path.join(workdir, "tensorboard"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def test_tensorboard_holds_each_epochs_metrics(cnn_run):
    config, workdir, history = cnn_run
    got = scalars(workdir)
    assert set(got) == set(log.TENSORBOARD_TAGS.values())
    expected = {key: [r[key] for r in history] for key in log.TENSORBOARD_TAGS if key in history[0]}
    expected["learning_rate"] = [config.learning_rate] * 2
    for key, values in expected.items():
        assert got[log.TENSORBOARD_TAGS[key]] == [(1, pytest.approx(values[0], rel=1e-6)),
                                                  (2, pytest.approx(values[1], rel=1e-6))]
    # images/s from the row's seconds, which metrics.jsonl rounds to the millisecond
    assert [v for _, v in got["train/images_per_second"]] == pytest.approx(
        [70 / r["seconds"] for r in history], abs=0.002 * 70 / min(r["seconds"] for r in history) ** 2)


def test_tensorboard_after_resume_has_no_duplicated_epochs(cnn_run, mock_cifar10, tmp_path):
    config, finished, history = cnn_run
    workdir = str(tmp_path / "run")
    shutil.copytree(finished, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "2"))  # epoch 2 is trained and logged again
    train_and_evaluate(config, workdir, progress=False, resume=True)
    got = scalars(workdir)
    for tag in ("train/loss", "test/accuracy"):
        assert [step for step, _ in got[tag]] == [1, 2]
    assert [v for _, v in got["test/accuracy"]] == pytest.approx(
        [r["test_accuracy"] for r in history], rel=1e-6)
