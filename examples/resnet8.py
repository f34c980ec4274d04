"""Does a small ResNet beat the Keras tutorial's CNN by more than seed-to-seed noise?

ResNet-8 (He et al. 2016's CIFAR ResNet, one basic block per stage: 78k parameters against the
CNN's 168k), trained with the CNN's recipe (Adam, batch 32). Each arm trains its seeds as one
compiled program (--num-seeds) and ends with the 95% interval of its test accuracy:

    python examples/resnet8.py --epochs 5 --num-seeds 4 --data-dir DIR --no-download

Any other flag of `python -m cifar_jax.train` is passed on to both arms. The model is named by
import path (resnet8:ResNet8), so its run resumes, evaluates and predicts from any process with
examples/ on PYTHONPATH; it is written as Flax's docs write a model (nn.Conv, nn.BatchNorm),
and its width is a setting (--model.width 32). What it gave on our data: docs/research.md,
"Examples".
"""

import sys
from functools import partial
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from cifar_jax.main import main as train


class ResNet8(nn.Module):
    """conv 16 -> three stages of one basic block (16, 32, 64 channels) -> pool -> Dense(10)."""

    width: int = 16  # the first stage's channels; each later stage doubles them
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train=False):
        conv = partial(nn.Conv, kernel_size=(3, 3), use_bias=False, dtype=self.dtype)
        norm = partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, dtype=self.dtype)
        x = nn.relu(norm()(conv(self.width)(x)))
        for width, stride in ((self.width, 1), (2 * self.width, 2), (4 * self.width, 2)):
            y = nn.relu(norm()(conv(width, strides=stride)(x)))
            y = norm()(conv(width)(y))
            if stride != 1:  # the shortcut changes resolution and width with the block
                x = norm()(conv(width, kernel_size=(1, 1), strides=stride)(x))
            x = nn.relu(x + y)
        return nn.Dense(10, dtype=self.dtype)(x.mean((1, 2))).astype(jnp.float32)


def main(argv):
    for model in ("cnn", "resnet8:ResNet8"):
        code = train(["--model", model, "--no-progress", *argv])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
