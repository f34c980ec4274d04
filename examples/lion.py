"""Is Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") a drop-in
replacement for Adam on the tutorial's CNN?

Lion's update is the sign of an interpolated momentum, so every weight moves by the full
learning rate: its authors advise a rate 3-10x below Adam's, and a weight decay as many times
above. Both arms train the same seeds as one compiled program each (--num-seeds):

    python examples/lion.py --epochs 5 --num-seeds 4 --data-dir DIR --no-download

An optimiser is a function of the learning rate returning an optax.GradientTransformation; it
gets any other setting it names (here --weight-decay, whose default becomes lion's own below).
Other flags go to both arms. What it gave on our data: README, "Research with cifar_jax".
"""

import sys

import optax

from cifar_jax import train


def lion(learning_rate=1e-4, weight_decay=0.0):
    """optax's Lion at a tenth of Adam's default rate (the CNN's 1e-3)."""
    return optax.lion(learning_rate, weight_decay=weight_decay)


def main(argv):
    for optimizer in ("adam", "lion:lion"):
        code = train.main(["--model", "cnn", "--optimizer", optimizer, "--no-progress", *argv])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
