"""`python tests/mock_train.py ARGS`: the training CLI on mock CIFAR-10 (MOCK_EXAMPLES per split).

For tests that must run training as a separate process (to kill it, say) without the real data.
"""

import os
import sys

import tensorflow_datasets as tfds

from cifar_jax.train import main

if __name__ == "__main__":
    with tfds.testing.mock_data(num_examples=int(os.environ.get("MOCK_EXAMPLES", "70"))):
        sys.exit(main(sys.argv[1:]))
