"""The command lines as a user runs them: a subprocess each, no real data needed."""

import os
import subprocess
import sys

import pytest


def run(*args, cwd=None):
    env = {**os.environ, "TFDS_DATA_DIR": "/nonexistent-tfds"}
    return subprocess.run([sys.executable, "-m", *args], check=False, capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_train_help_explains_every_flag():
    result = run("cifar_jax.train", "--help")
    assert result.returncode == 0
    for flag in ("--model", "--optimizer", "--learning-rate", "--epochs", "--batch-size", "--seed",
                 "--data-dir", "--no-download", "--workdir", "--keep", "--no-progress"):
        assert flag in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet"], "argument --model: invalid choice: 'resnet' (choose from 'airbench94', 'cnn', 'mlp')"),
    (["--epochs", "0"], "argument --epochs: must be a positive number, got '0'"),
    (["--epochs", "ten"], "argument --epochs: must be a positive number, got 'ten'"),
    (["--batch-size", "-32"], "argument --batch-size: must be a positive integer, got '-32'"),
    (["--learning-rate", "nan"], "argument --learning-rate: must be a positive number, got 'nan'"),
    (["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
])
def test_bad_flags_get_one_line_and_exit_2(args, message):
    result = run("cifar_jax.train", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_missing_data_dir_is_one_line_exit_1(tmp_path):
    result = run("cifar_jax.train", "--data-dir", str(tmp_path / "missing"),
                 "--workdir", str(tmp_path / "run"), "--no-progress")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        (f"error: data dir {tmp_path / 'missing'} does not exist: point --data-dir at a folder "
         "holding a prepared TFDS cifar10, or leave it out to download there")]
    assert result.stdout.splitlines()[0] == "cpu, 1 device"
    assert not (tmp_path / "run").exists()  # no half-made run folder to trip over on the rerun


def test_unprepared_data_dir_without_download_exit_1(tmp_path):
    result = run("cifar_jax.train", "--data-dir", str(tmp_path), "--no-download",
                 "--workdir", str(tmp_path / "run"))
    assert result.returncode == 1
    assert result.stderr.strip() == (f"error: CIFAR-10 is not prepared in {tmp_path}: pass --data-dir "
                                     "pointing at a prepared TFDS cifar10 copy, or allow the download")
