"""The Keras tutorial itself, end to end, on the same TFDS data: the baseline for benchmarks.tutorial.

    python -m benchmarks.keras_tutorial [--data-dir DIR]

MLP (SGD 0.01, 5 epochs) then CNN (Adam 1e-3, 10 epochs), batch 32, each evaluated on the test
set, with the MLP's test predictions taken for its confusion matrix, as the tutorial does.
"""

import argparse
import json

from benchmarks.peers import keras_model
from cifar_jax.data import load_cifar10


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.keras_tutorial")
    p.add_argument("--data-dir")
    args = p.parse_args(argv)
    splits = load_cifar10(args.data_dir, download=False)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    x_train, x_test = x_train / 255.0, x_test / 255.0
    results = {}
    for name, epochs in (("mlp", 5), ("cnn", 10)):
        model = keras_model(name)
        fit = model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=2)
        _, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
        if name == "mlp":
            model.predict(x_test, verbose=0).argmax(-1)  # the tutorial's confusion-matrix input
        results[name] = {"train_accuracy": fit.history["accuracy"][-1],
                         "train_loss": fit.history["loss"][-1], "test_accuracy": test_accuracy}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
