"""`python tests/mock_train.py ARGS`: the training CLI on mock CIFAR-10 (MOCK_EXAMPLES per split).

For tests that must run training as a separate process (to kill it, say) without the real data;
`cnn_command` gives them the command line and environment. Importing torch fails loudly here:
none of cifar_jax's commands needs it, and where it is installed it costs seconds of start-up.
Figures are saved unrendered, as in the tests' own runs (conftest.figures_unrendered).
MOCK_CALL_SECONDS=S makes every compiled call of training start S seconds late, so that a run
on a few mock images lasts long enough to be interrupted where a test wants it.
"""

import importlib.abc
import os
import sys
import time

import tensorflow_datasets as tfds


def cnn_command(workdir, *extra, epochs=2, examples=300, env=None):
    """(argv, env) running this script: the CNN for `epochs` on `examples` mock images per split,
    into `workdir`, with `env` added to this process's environment."""
    argv = [sys.executable, os.path.abspath(__file__), "--model", "cnn", "--epochs", str(epochs),
            "--workdir", workdir, "--no-progress", *extra]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return argv, {**os.environ, "MOCK_EXAMPLES": str(examples), "PYTHONPATH": repo, **(env or {})}


class TorchImported(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "torch":
            raise RuntimeError("torch imported: a cifar_jax command should not pay for it")


if __name__ == "__main__":
    sys.meta_path.insert(0, TorchImported())
    from conftest import figures_unrendered_here

    from cifar_jax import steps
    from cifar_jax.main import main

    figures_unrendered_here()
    delayed = []
    if delay := float(os.environ.get("MOCK_CALL_SECONDS", "0")):
        def late(n, real=steps.train_batches_stacked):  # what train.py calls for each part
            def call(*args, **kwargs):
                delayed.append(1)
                time.sleep(delay)
                return real(n)(*args, **kwargs)
            return call

        steps.train_batches_stacked = late

    with tfds.testing.mock_data(num_examples=int(os.environ.get("MOCK_EXAMPLES", "70"))):
        code = main(sys.argv[1:])
    if delay and not delayed:  # the loop calls something else now: say so, not a flaky test
        sys.exit("MOCK_CALL_SECONDS delayed no call: patch what cifar_jax.train calls to train")
    sys.exit(code)
