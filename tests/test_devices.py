"""Several devices (4 simulated CPU devices): data parallelism, and the models of `--num-seeds`
and `--sweep` spread over a ("models", "data") mesh, each run equal to its one-device twin.
One subprocess runs every scenario (tests/on_four_devices.py): a process's device count is
fixed when it starts, and one process pays the imports and the backend's start-up once."""

import json
import os
import subprocess
import sys

import pytest

KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "on_four_devices.py")


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """(the subprocess's output folder, its results.json)."""
    out = tmp_path_factory.mktemp("four")
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    proc = subprocess.run([sys.executable, SCRIPT, str(out)], capture_output=True, text=True,
                          env={**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"},
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    with open(out / "results.json") as f:
        return out, json.load(f)


def test_four_devices_train_like_one(four, cnn_run):
    out, results = four
    assert results["cnn"]["code"] == 0, results["cnn"]["stderr"]
    assert results["cnn"]["stdout"].startswith("cpu, 4 devices; compilation cache ")
    with open(out / "cnn" / "metrics.jsonl") as f:
        four_devices = [json.loads(line) for line in f]
    for one, four_ in zip(cnn_run[2], four_devices, strict=True):
        for key in ("train_loss", "test_loss"):
            assert four_[key] == pytest.approx(one[key], rel=1e-4)
        for key in ("train_accuracy", "test_accuracy"):
            assert four_[key] == pytest.approx(one[key], abs=2 / 70)  # a flipped prediction or two


def test_batch_that_does_not_split_over_the_devices_is_a_usage_error(four):
    out, results = four
    assert results["batch_30"]["code"] == 2
    assert results["batch_30"]["stderr"].strip() == (
        "error: --batch-size 30 does not split evenly over 4 devices: use a multiple of 4, such "
        "as 28 or 32")
    assert not (out / "batch_30").exists()


def test_models_spread_over_simulated_devices(four, two_seeds):
    """N models take a "models" axis of gcd(N, 4); 2 models train on a 2 x 2 mesh, each equal
    to the one-device run's."""
    _, results = four
    assert results["meshes"] == {"1": [1, 4], "2": [2, 2], "3": [1, 4], "8": [4, 1]}
    for key in KEYS:
        assert results["seeds"][key] == pytest.approx(two_seeds[2][-1]["per_seed"][key],
                                                      rel=1e-5, abs=1e-6)


def test_points_and_seeds_spread_over_simulated_devices(four, lr_sweep):
    """2 points x 2 seeds take a "models" axis of 4 (vmapped there, not in turn); after one
    epoch each model is the one-device run's, but for rounding."""
    _, results = four
    for got, entry in zip(results["sweep"], lr_sweep[2][0]["points"], strict=True):
        for key in KEYS:
            assert got[key] == pytest.approx(entry["per_seed"][key], rel=1e-5, abs=1e-6)
