"""CIFAR-10 from tensorflow-datasets, held in memory, batched and shuffled on the device.

The whole dataset is small (150 MB of uint8 pixels), so it is loaded once, put on the device as
uint8, and every epoch is a permutation of indices into it: pixels are scaled to [0, 1] float32
inside the compiled step, so no per-step host-to-device copy ever happens.
"""

import os
import socket
import urllib.parse

import jax
import jax.numpy as jnp
import numpy as np

from cifar_jax import parallel

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (32, 32, 3)


class DataError(RuntimeError):
    """The dataset cannot be found or fetched; the message says what to do."""


def _hide_gpus_from_tensorflow():
    """tf.data runs on the CPU: TensorFlow must never take GPU memory away from JAX."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter,
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # and its oneDNN notice (tf only reads files)
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")


def _reachable(url, timeout=5.0):
    host = urllib.parse.urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_cifar10(data_dir=None, download=True):
    """Both splits as numpy: {"train": (images uint8 [N,32,32,3], labels int32 [N]), "test": ...}.

    Reads a prepared TFDS `cifar10` from `data_dir` (default: $TFDS_DATA_DIR, else
    ~/tensorflow_datasets); downloads it there first when it is missing and `download` is set.
    In a multi-process run each process reads only its own part of each split, and the parts
    are then shared, so every process ends with the whole dataset in the same order.
    """
    _hide_gpus_from_tensorflow()
    import tensorflow_datasets as tfds

    if data_dir is not None:
        data_dir = os.path.expanduser(data_dir)
        if not os.path.isdir(data_dir):
            raise DataError(f"data dir {data_dir} does not exist: point --data-dir at a folder "
                            "holding a prepared TFDS cifar10, or leave it out to download there")
    builder = tfds.builder("cifar10", data_dir=data_dir)

    def read(split):
        splits = builder.info.splits  # empty when not prepared, or mocked
        size = splits[split].num_examples if split in splits else 10_000  # one parallel-decoded batch
        ds = builder.as_dataset(split=parallel.process_split(split), batch_size=size, as_supervised=True)
        batches = list(tfds.as_numpy(ds))
        images = np.concatenate([images for images, _ in batches]).astype(np.uint8)
        labels = np.concatenate([labels for _, labels in batches]).astype(np.int32)
        return parallel.gather_from_processes(images), parallel.gather_from_processes(labels)

    try:
        return {split: read(split) for split in ("train", "test")}
    except AssertionError:  # TFDS's way of saying "not prepared in this data dir"
        pass
    where = builder.data_dir_root
    if not download:
        raise DataError(f"CIFAR-10 is not prepared in {where}: pass --data-dir pointing at a "
                        "prepared TFDS cifar10 copy, or allow the download")
    if not _reachable(builder.info.homepage):
        raise DataError(f"CIFAR-10 is not in {where} and cannot be downloaded (no network): "
                        "pass --data-dir pointing at a prepared TFDS cifar10 copy")
    builder.download_and_prepare()
    return {split: read(split) for split in ("train", "test")}


def to_float(images):
    """uint8 pixels -> float32 in [0, 1]; works on numpy and on jax arrays, inside jit too."""
    return jnp.asarray(images, jnp.float32) / 255.0


def num_batches(n, batch_size):
    """Batches per pass over n examples; the last, partial one counts (as Keras does)."""
    return -(-n // batch_size)


def batch_indices(n, batch_size, rng=None):
    """Indices [num_batches, batch_size] and a 0/1 mask of the same shape over n examples.

    With `rng` (a JAX key) the order is a fresh permutation, otherwise 0..n-1. The tail of the
    last batch is padded with index 0 and mask 0, so every batch has one shape: the partial
    batch is trained on without a second compilation, and the padding never counts.
    """
    steps = num_batches(n, batch_size)
    order = jnp.arange(n) if rng is None else jax.random.permutation(rng, n)
    pad = steps * batch_size - n
    idx = jnp.concatenate([order, jnp.zeros(pad, order.dtype)]).reshape(steps, batch_size)
    mask = (jnp.arange(steps * batch_size) < n).astype(jnp.float32).reshape(steps, batch_size)
    return idx, mask
