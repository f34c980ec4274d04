"""Several processes training one run, and the checks before data parallelism (several
devices in one process: test_devices.py)."""

import json
import os
import socket
import subprocess
import typing

import pytest
from conftest import MOCK_EXAMPLES
from mock_train import cnn_command

from cifar_jax import parallel, run
from cifar_jax.config import Config


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
        argv, env = cnn_command(workdir, "--eval-batch-size", "32", examples=MOCK_EXAMPLES, env={
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(i)})
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
