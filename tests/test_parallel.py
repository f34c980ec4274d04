"""Data parallelism on simulated CPU devices: a subprocess each, the device count fixed at start."""

import json
import os
import subprocess
import sys

import pytest

from cifar_jax import parallel

HERE = os.path.dirname(__file__)


def mock_train(workdir, devices, *extra):
    env = {**os.environ, "MOCK_EXAMPLES": "300", "PYTHONPATH": os.path.dirname(HERE),
           "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.run([sys.executable, os.path.join(HERE, "mock_train.py"), "--model", "cnn",
                           "--epochs", "2", "--workdir", workdir, "--no-progress", *extra],
                          env=env, capture_output=True, text=True, timeout=300)


def test_four_devices_train_like_one(tmp_path):
    runs = {}
    for devices in (1, 4):
        result = mock_train(str(tmp_path / str(devices)), devices)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == f"cpu, {devices} device{'s' if devices > 1 else ''}"
        with open(tmp_path / str(devices) / "metrics.jsonl") as f:
            runs[devices] = [json.loads(line) for line in f]
    for one, four in zip(runs[1], runs[4], strict=True):
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
        size = 8
    parallel.check_divisible(64, Mesh())
    with pytest.raises(ValueError, match="use a multiple of 8, such as 8$"):
        parallel.check_divisible(5, Mesh())
