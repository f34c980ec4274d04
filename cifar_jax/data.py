"""CIFAR-10 from tensorflow-datasets, held in memory, batched and shuffled on the device.

The whole dataset is small (150 MB of uint8 pixels), so it is loaded once, put on the device as
uint8, and every epoch is a permutation of indices into it: pixels are scaled to [0, 1] float32
inside the compiled step, so no per-step host-to-device copy ever happens.

It is read through `tfds.data_source` (ArrayRecord, random access, no TensorFlow); a data dir
that `tfds.load` prepared as TFRecord is read with TensorFlow where it is installed. A missing
dataset is downloaded and prepared as ArrayRecord by `cifar_jax.prepare`, without TensorFlow.
The decoded ArrayRecord splits are cached as uint8 `.npy` files (`cifar_jax.cache`): only the
first run decodes them.
"""

import os
import socket
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np

from cifar_jax import cache, parallel

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")
IMAGE_SHAPE = (32, 32, 3)
SPLITS = ("train", "test")


class DataError(RuntimeError):
    """The dataset cannot be found or fetched; the message says what to do."""


def _hide_gpus_from_tensorflow():
    """tf.data runs on the CPU: TensorFlow must never take GPU memory away from JAX."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")


def _reachable(url, timeout=5.0):
    host = urllib.parse.urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_cifar10(data_dir=None, download=True, archive=None):
    """Both splits as numpy: {"train": (images uint8 [N,32,32,3], labels int32 [N]), "test": ...}.

    Reads a prepared TFDS `cifar10` from `data_dir` (default: $TFDS_DATA_DIR, else
    ~/tensorflow_datasets). When it is missing there, it is prepared there first (as ArrayRecord,
    see `cifar_jax.prepare`): from `archive` (a path to cifar-10-binary.tar.gz) if given, else
    from the official archive, downloaded when `download` is set (`download` only governs the
    network: a given `archive` is used either way). In a multi-process run each process reads
    only its own part of each split, and the parts are then shared, so every process ends with
    the whole dataset in the same order.
    """
    # tensorflow_datasets imports TensorFlow only where it is used (a TFRecord data dir); these
    # quieten TensorFlow's start-up chatter and its oneDNN notice then.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow_datasets as tfds

    if data_dir is not None:
        data_dir = os.path.expanduser(data_dir)
        if not os.path.isdir(data_dir):
            raise DataError(f"data dir {data_dir} does not exist: point --data-dir at a folder "
                            "holding a prepared TFDS cifar10, or leave it out to download there")
    builder = tfds.builder("cifar10", data_dir=data_dir)
    splits = _read(builder)
    if splits is not None:
        return splits
    where = builder.data_dir_root
    if archive is None:
        if not download:
            raise DataError(f"CIFAR-10 is not prepared in {where}: pass --data-dir pointing at a "
                            "prepared TFDS cifar10 copy, or allow the download")
        if not _reachable(builder.info.homepage):
            raise DataError(f"CIFAR-10 is not in {where} and cannot be downloaded (no network): "
                            "pass --data-dir pointing at a prepared TFDS cifar10 copy")
    from cifar_jax import prepare

    prepare.prepare(where, archive)
    return _read(tfds.builder("cifar10", data_dir=data_dir))


def _read(builder):
    """Both splits from the builder's data dir, or None when cifar10 is not prepared there."""
    import tensorflow_datasets as tfds

    # info.splits comes from the data dir's dataset_info.json: empty when not prepared there.
    # (builder.is_prepared() would say the same, with a warning on stderr when it is not.)
    if builder.info.splits and builder.info.file_format == tfds.core.FileFormat.TFRECORD:
        return _read_tfrecord(builder)
    # A prepared data dir's images come as their PNG bytes, which `_read_source` decodes in
    # threads beside the reading. tfds's mock data (a builder never prepared: no splits) cannot
    # give bytes without TensorFlow.
    decoders = {"image": tfds.decode.SkipDecoding()} if builder.info.splits else None
    try:
        # Also the path of tfds.testing.mock_data, which patches as_data_source to serve random
        # examples from a builder that is never prepared.
        sources = {split: builder.as_data_source(split=parallel.process_split(split),
                                                 decoders=decoders)
                   for split in SPLITS}
    except NotImplementedError:
        # Not prepared: tfds then assumes TFRecord, which has no random-access data source.
        return None
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("array_record"):
            raise
        raise DataError("reading CIFAR-10 (ArrayRecord) needs the array_record package: pip "
                        "install array_record (it has no Windows wheels: use WSL)") from None
    return {split: _gathered(*_cached(builder, parallel.process_split(split), source))
            for split, source in sources.items()}


def _cached(builder, split, source):
    """`split` from the decoded-array cache (`cifar_jax.cache`), or decoded from `source` and
    cached for the next run."""
    arrays = cache.load(builder, split)
    if arrays is None:
        arrays = _read_source(source, decode=builder.info.features["image"].decode_example_np)
        cache.save(builder, split, *arrays)
    return arrays


def _read_source(source, chunk=1000, decode=None):
    """(images uint8 [N,32,32,3], labels int32 [N]) of a tfds data source, in its order.

    A source whose images are their PNG bytes (`SkipDecoding`) is decoded here by `decode`
    (tfds's own, with OpenCV), a chunk at a time in two threads while this one reads the next
    chunks: OpenCV lets go of Python's lock while it decodes, the reading holds it. On two
    cores, 7.4 s for both splits, against 9.7 s decoded in the reading thread and 16.6 s with
    PIL (which keeps the lock).
    """
    n = len(source)
    images = np.empty((n, *IMAGE_SHAPE), np.uint8)
    labels = np.empty(n, np.int32)

    def put(start, part):
        images[start:start + len(part)] = [decode(image) for image in part] if isinstance(
            part[0], bytes) else part

    with ThreadPoolExecutor(2) as decoding:
        decoded = []
        for start in range(0, n, chunk):
            keys = range(start, min(start + chunk, n))
            # Batched: ArrayRecord reads a chunk's records in parallel, cheaper than one by one.
            try:
                examples = source.__getitems__(keys)
            except TypeError:  # tfds.testing.mock_data's data source breaks __getitems__ (4.9)
                examples = [source[i] for i in keys]
            decoded.append(decoding.submit(put, start, [example["image"] for example in examples]))
            labels[keys.start:keys.stop] = [example["label"] for example in examples]
        for done in decoded:
            done.result()  # raises what a decoding raised
    return images, labels


def _read_tfrecord(builder):
    """Both splits of a TFRecord data dir, through tf.data (needs TensorFlow)."""
    import tensorflow_datasets as tfds

    try:
        _hide_gpus_from_tensorflow()
    except ImportError:
        raise DataError(f"CIFAR-10 in {builder.data_dir_root} is prepared as TFRecord, which needs "
                        "TensorFlow: pip install 'cifar_jax[tfrecord]', or prepare ArrayRecord "
                        "in another folder (python -m cifar_jax.prepare --data-dir NEW_DIR) and "
                        "pass --data-dir NEW_DIR") from None
    splits = {}
    for split in SPLITS:
        size = builder.info.splits[split].num_examples  # one batch: decoded in parallel
        ds = builder.as_dataset(split=parallel.process_split(split), batch_size=size,
                                as_supervised=True)
        batches = list(tfds.as_numpy(ds))
        images = np.concatenate([images for images, _ in batches]).astype(np.uint8)
        labels = np.concatenate([labels for _, labels in batches]).astype(np.int32)
        splits[split] = _gathered(images, labels)
    return splits


def _gathered(images, labels):
    """This process's part joined with the other processes' (as is, on one process)."""
    return parallel.gather_from_processes(images), parallel.gather_from_processes(labels)


# The training set's per-channel mean and std of the pixels in [0, 1] (airbench's figures), by
# which airbench's network normalises its input and the colour jitter works.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def to_float(images):
    """Pixels (uint8, or float in the same 0-255 scale: a colour jitter's) -> float32 in
    [0, 1]; works on numpy and on jax arrays, inside jit too."""
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
