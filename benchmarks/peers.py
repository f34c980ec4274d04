"""The same two models and training recipe in Keras and in PyTorch, for measuring against.

Each `*_trainer(model, batch_size, images, labels)` returns a function that trains one pass over
the given in-memory float32 images (NHWC, [0, 1]), the way each framework's own tutorials train
(Keras's `model.fit`, PyTorch's ordinary loop), and returns the images/s it reached.
"""

import functools
import os
import time

import numpy as np


def keras_model(name):
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    layers = keras.layers
    if name == "mlp":
        body = [layers.Flatten(), layers.Dense(3000, activation="relu"),
                layers.Dense(1000, activation="relu"), layers.Dense(10, activation="softmax")]
        optimizer = keras.optimizers.SGD(learning_rate=0.01)
    else:
        body = [layers.Conv2D(32, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
                layers.Conv2D(64, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2)),
                layers.Flatten(), layers.Dense(64, activation="relu"),
                layers.Dense(10, activation="softmax")]
        optimizer = keras.optimizers.Adam(learning_rate=1e-3)
    model = keras.Sequential([keras.Input((32, 32, 3)), *body])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def keras_trainer(name, batch_size, images, labels):
    model = keras_model(name)

    def train_pass():
        start = time.perf_counter()
        model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=0)
        return len(images) / (time.perf_counter() - start)

    return train_pass


def torch_trainer(name, batch_size, images, labels, torch_compile=False):
    """PyTorch's trainer; with `torch_compile`, the model compiled by torch.compile
    (`nn.Module.compile`, in place): the peer "torch.compile"."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if name == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(3072, 3000), nn.ReLU(), nn.Linear(3000, 1000),
                              nn.ReLU(), nn.Linear(1000, 10))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    else:
        model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(64 * 6 * 6, 64), nn.ReLU(), nn.Linear(64, 10))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    if torch_compile:
        model.compile()
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))  # NCHW, torch's layout
    y = torch.from_numpy(labels.astype(np.int64))
    loss_fn = nn.CrossEntropyLoss()

    def train_pass():
        start = time.perf_counter()
        model.train()
        for i in torch.randperm(len(x)).split(batch_size):
            optimizer.zero_grad()
            loss_fn(model(x[i]), y[i]).backward()
            optimizer.step()
        return len(x) / (time.perf_counter() - start)

    return train_pass


def available():
    """The peers importable here, by name."""
    found = {}
    try:
        import keras  # noqa: F401

        found["keras"] = keras_trainer
    except ImportError:
        pass
    try:
        import torch  # noqa: F401

        found["torch"] = torch_trainer
        found["torch.compile"] = functools.partial(torch_trainer, torch_compile=True)
    except ImportError:
        pass
    return found
