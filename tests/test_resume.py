"""Checkpoints, resuming, determinism, and the errors a run can meet on the way."""

import json
import os
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from mock_train import cnn_command

from cifar_jax import predict, steps, train
from cifar_jax.config import Config
from cifar_jax.train import TrainingError, train_and_evaluate


def rows(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in f]


def same_params(a, b):
    leaves_a = jax.tree.leaves(predict.load_run(a)[2])
    leaves_b = jax.tree.leaves(predict.load_run(b)[2])
    return all(np.array_equal(x, y) for x, y in zip(leaves_a, leaves_b, strict=True))


def snapshot(folder):
    """Every file below `folder` with its bytes, to show that nothing was touched."""
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                out[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return out


def test_interrupted_then_resumed_equals_uninterrupted(cnn_run, mock_cifar10, tmp_path, monkeypatch):
    config, whole, _ = cnn_run  # 2 epochs of 3 compiled calls each
    calls, real = [], steps.train_batches

    def interrupt_in_epoch_2(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(steps, "train_batches", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, str(tmp_path / "cut"), progress=False)
    assert len(rows(tmp_path / "cut")) == 1
    assert os.listdir(tmp_path / "cut" / "checkpoints") == ["1"]

    monkeypatch.setattr(steps, "train_batches", real)
    history = train_and_evaluate(config, str(tmp_path / "cut"), progress=False, resume=True)
    assert [row["epoch"] for row in history] == [1, 2]
    assert rows(tmp_path / "cut") == rows(whole)
    assert same_params(str(tmp_path / "cut"), whole)


def test_resume_drops_metrics_of_an_epoch_whose_checkpoint_never_landed(cnn_run, mock_cifar10,
                                                                          tmp_path):
    config, finished, _ = cnn_run
    workdir = str(tmp_path / "run")
    shutil.copytree(finished, workdir)
    shutil.rmtree(os.path.join(workdir, "checkpoints", "2"))  # died between metrics and checkpoint
    train_and_evaluate(config, workdir, progress=False, resume=True)
    assert rows(workdir) == rows(finished)
    assert same_params(workdir, finished)


def test_keep_limits_the_checkpoints(mock_cifar10, tmp_path):
    config = Config.for_model("cnn", epochs=4, eval_batch_size=32, keep_checkpoints=2)
    train_and_evaluate(config, str(tmp_path), progress=False)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["3", "4"]


def test_diverging_loss_stops_with_epoch_and_step(mock_cifar10, tmp_path):
    config = Config.for_model("mlp", epochs=2, learning_rate=1e6, eval_batch_size=32)
    with pytest.raises(TrainingError) as error:
        train_and_evaluate(config, str(tmp_path), progress=False)
    message = str(error.value)
    assert message.startswith("loss became nan at epoch 1/2, step ")
    assert message.endswith("/3: lower --learning-rate; no epoch had finished, so no checkpoint "
                            "was written")
    assert not os.path.exists(tmp_path / "metrics.jsonl")


def run_cli(capsys, *args):
    code = train.main([*args, "--no-progress"])
    return code, capsys.readouterr().err.strip()


def test_resume_errors_are_one_line_and_touch_nothing(cnn_run, mock_cifar10, tmp_path, capsys):
    _, finished, _ = cnn_run
    run = str(tmp_path / "run")
    shutil.copytree(finished, run)
    before = snapshot(run)
    assert run_cli(capsys, "--workdir", run, "--resume", "--model", "mlp") == (
        2, f"error: {run} was run with model='cnn', not 'mlp': drop that flag to resume the run as it was")
    assert run_cli(capsys, "--workdir", run, "--resume", "--epochs", "7") == (
        2, f"error: {run} was run with epochs=2, not 7: drop that flag to resume the run as it was")
    assert run_cli(capsys, "--workdir", run) == (
        2, (f"error: workdir {run} is not empty: choose a new --workdir, or pass --resume to "
            "continue the run in it (nothing in it was changed)"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli(capsys, "--workdir", str(empty), "--resume") == (
        2, (f"error: nothing to resume: {empty} holds no cifar_jax run (no config.json); "
            "start the run without --resume"))
    assert snapshot(run) == before


def test_missing_and_corrupt_checkpoints_are_runtime_errors(damaged_run, mock_cifar10, capsys):
    run, newest = damaged_run
    before = snapshot(run)
    code, err = run_cli(capsys, "--workdir", run, "--resume")
    assert code == 1
    assert err.startswith(f"error: checkpoint {newest} cannot be read (")
    assert err.endswith("): delete that folder to fall back to the one before, or start a new run")
    assert snapshot(run) == before

    shutil.rmtree(os.path.join(run, "checkpoints"))
    code, err = run_cli(capsys, "--workdir", run, "--resume")
    assert code == 1 and err.startswith("error: no checkpoint in ")


def test_unwritable_workdir_is_a_usage_error(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert run_cli(capsys, "--workdir", str(tmp_path / "file" / "run")) == (
        2, (f"error: cannot write to workdir {tmp_path / 'file' / 'run'} (Not a directory): "
            "choose another --workdir"))


def test_resume_needs_a_workdir(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.parse_args(["--resume"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == ("python -m cifar_jax.train: error: --resume needs "
                                               "--workdir: the folder of the run to continue (see --help)")


def mock_train(workdir, *extra):
    argv, env = cnn_command(workdir, *extra, epochs=3, examples=1500)
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(workdir, epoch, proc):
    path = os.path.join(workdir, "checkpoints", str(epoch))
    deadline = time.time() + 120
    while not os.path.isdir(path) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    whole, cut = str(tmp_path / "whole"), str(tmp_path / "cut")
    victim = mock_train(cut)
    wait_for_checkpoint(cut, 1, victim)
    time.sleep(0.1)  # into epoch 2
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    assert len(rows(cut)) < 3

    resumed = mock_train(cut, "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resuming after epoch" in out
    with tfds.testing.mock_data(num_examples=1500):  # the same run, uninterrupted, in-process
        train_and_evaluate(Config.for_model("cnn", epochs=3), whole, progress=False)
    assert rows(cut) == rows(whole)
    assert same_params(cut, whole)


def test_ctrl_c_says_how_to_resume(tmp_path):
    workdir = str(tmp_path / "run")
    proc = mock_train(workdir)
    wait_for_checkpoint(workdir, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert err.strip().splitlines()[-1] == (
        f"interrupted: every finished epoch is checkpointed in {workdir}; continue with: "
        f"python -m cifar_jax.train --workdir {workdir} --resume")
    assert "Traceback" not in err
