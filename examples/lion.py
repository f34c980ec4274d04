"""Is Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms") a drop-in
replacement for Adam on the tutorial's CNN?

Lion's update is the sign of an interpolated momentum, so every weight moves by the full
learning rate: its authors advise a rate 3-10x below Adam's, and a weight decay as many times
above. Both arms train the same seeds as one compiled program each (--num-seeds):

    python examples/lion.py --epochs 5 --num-seeds 4 --data-dir DIR --no-download

An optimiser is a function of the learning rate returning an optax.GradientTransformation; its
other keyword parameters are its settings (here --optimizer.weight_decay, or --weight-decay for
short, and --optimizer.b2; the defaults below are lion's own). Other flags go to both arms.
What it gave on our data: docs/research.md, "Examples".
"""

import sys

import optax

from cifar_jax.main import main as train


def lion(learning_rate=1e-4, b1=0.9, b2=0.99, weight_decay=0.0):
    """optax's Lion at a tenth of Adam's default rate (the CNN's 1e-3)."""
    return optax.lion(learning_rate, b1=b1, b2=b2, weight_decay=weight_decay)


def main(argv):
    for optimizer in ("adam", "lion:lion"):
        code = train(["--model", "cnn", "--optimizer", optimizer, "--no-progress", *argv])
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
