"""Data parallelism on simulated CPU devices: a subprocess each, the device count fixed at start."""

import json
import os
import socket
import subprocess
import typing

import pytest
import tensorflow_datasets as tfds
from mock_train import cnn_command

from cifar_jax import parallel, run
from cifar_jax.config import Config
from cifar_jax.train import train_and_evaluate


def mock_train(workdir, devices, *extra):
    argv, env = cnn_command(workdir, *extra, env={
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"})
    return subprocess.run(argv, env=env, check=False, capture_output=True, text=True, timeout=300)


def test_four_devices_train_like_one(tmp_path):
    result = mock_train(str(tmp_path / "4"), 4)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("cpu, 4 devices; compilation cache ")
    with open(tmp_path / "4" / "metrics.jsonl") as f:
        four_devices = [json.loads(line) for line in f]
    # the same run on this process's one device
    with tfds.testing.mock_data(num_examples=300):
        one_device = train_and_evaluate(Config.for_model("cnn", epochs=2), str(tmp_path / "1"),
                                        progress=False)
    for one, four in zip(one_device, four_devices, strict=True):
        for key in ("train_loss", "test_loss"):
            assert four[key] == pytest.approx(one[key], rel=1e-4)
        for key in ("train_accuracy", "test_accuracy"):
            assert four[key] == pytest.approx(one[key], abs=2 / 300)  # a flipped prediction or two


def test_batch_that_does_not_split_over_the_devices_is_a_usage_error(tmp_path):
    result = mock_train(str(tmp_path / "run"), 4, "--batch-size", "30")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --batch-size 30 does not split evenly over 4 devices: "
                                     "use a multiple of 4, such as 28 or 32")
    assert not (tmp_path / "run").exists()


def test_check_divisible_hints():
    class Mesh:
        shape: typing.ClassVar = {"models": 1, "data": 8}
    parallel.check_divisible(64, Mesh())
    with pytest.raises(ValueError, match="use a multiple of 8, such as 8$"):
        parallel.check_divisible(5, Mesh())


def test_every_process_checks_the_workdir_before_the_main_one_fills_it(tmp_path, monkeypatch):
    # Otherwise a slower process finds process 0's config.json and refuses a "non-empty" workdir.
    workdir = tmp_path / "run"
    seen_at_sync = []
    monkeypatch.setattr(parallel, "sync",
                        lambda name: seen_at_sync.append((workdir / "config.json").exists()))
    run.create(Config.for_model("cnn"), str(workdir))
    assert seen_at_sync == [False]
    assert os.listdir(workdir) == ["config.json"]


def test_two_processes_train_together_and_only_the_first_writes(tmp_path):
    with socket.socket() as s:  # a free port on this machine for the coordinator
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = str(tmp_path / "run")
    procs = []
    for i in range(2):
        argv, env = cnn_command(workdir, env={"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                                              "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)})
        procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.splitlines()[0].startswith("cpu, 2 devices; compilation cache ")
    assert [line.split()[1] for line in outs[0][0].splitlines() if line.startswith("epoch")] == ["1/2", "2/2"]
    assert not [line for line in outs[1][0].splitlines() if line.startswith("epoch")]
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
