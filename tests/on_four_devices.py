"""`python tests/on_four_devices.py OUT` with 4 simulated CPU devices: every scenario of
test_devices.py in one process (the device count is fixed when a process starts, and one process
pays the imports and the backend's start once), the results in OUT/results.json."""

import contextlib
import io
import json
import sys

import tensorflow_datasets as tfds
from conftest import (
    LR_SWEEP,
    MOCK_EXAMPLES,
    cnn_config,
    figures_unrendered_here,
    trained,
)

from cifar_jax import main, parallel


def command(*argv):
    """`python -m cifar_jax.train ARGV` here: its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main.main(list(argv))
        except SystemExit as e:
            code = e.code
    return {"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


if __name__ == "__main__":
    figures_unrendered_here()
    out = sys.argv[1]
    cnn = ["--model", "cnn", "--epochs", "2", "--eval-batch-size", "32", "--no-progress"]
    results = {"meshes": {n: list(parallel.data_mesh(n).shape.values()) for n in (1, 2, 3, 8)}}
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        results["cnn"] = command(*cnn, "--workdir", f"{out}/cnn")
        results["batch_30"] = command(*cnn, "--batch-size", "30", "--workdir", f"{out}/batch_30")
    results["seeds"] = trained(cnn_config(num_seeds=2), f"{out}/seeds")[-1]["per_seed"]
    results["sweep"] = [entry["per_seed"] for entry in trained(
        cnn_config(epochs=1, num_seeds=2, sweep=LR_SWEEP), f"{out}/sweep")[-1]["points"]]
    with open(f"{out}/results.json", "w") as f:
        json.dump(results, f)
