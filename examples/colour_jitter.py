"""Does colour jitter help airbench94 in a short run, on top of its flip and translation?

A random brightness and contrast change per image, a common addition that airbench94 leaves
out. An augmentation is a pure function of uint8 images [B, 32, 32, 3] and a PRNG key, run on
the device inside the compiled step; the arms train their seeds as one program (--num-seeds):

    python examples/colour_jitter.py --epochs 2 --num-seeds 3 --data-dir DIR --no-download

Other flags go to both arms. What it gave on our data: docs/research.md, "Examples".
"""

import sys

import jax
import jax.numpy as jnp

from cifar_jax.main import main as train


def jitter(images, key, strength=0.2):
    """Each image's contrast (about its mean) and brightness scaled by U(1 - s, 1 + s)."""
    contrast, brightness = jax.random.uniform(key, (2, images.shape[0], 1, 1, 1),
                                              minval=1 - strength, maxval=1 + strength)
    x = images.astype(jnp.float32)
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    x = ((x - mean) * contrast + mean) * brightness
    return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


def main(argv):
    for augment in ("alternating_flip,translate", "alternating_flip,translate,colour_jitter:jitter"):
        code = train(["--model", "airbench94", "--augment", augment, "--no-progress", *argv])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
