"""Prepare CIFAR-10 as a TFDS `cifar10` data dir in ArrayRecord, without TensorFlow.

`python -m cifar_jax.prepare [--data-dir DIR] [--archive cifar-10-binary.tar.gz]` writes

    DIR/cifar10/3.0.2/{dataset_info.json, features.json, cifar10-{train,test}.array_record-*}

which `tfds.data_source("cifar10", data_dir=DIR)` and `cifar_jax.data.load_cifar10(DIR)` read.
Without `--archive` the official archive (https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz,
the one TFDS uses, 163 MiB) is downloaded into DIR/downloads by TFDS's download manager, which
checks it against TFDS's registered checksum; with it, that file is read and nothing is fetched.

The dataset is TFDS's own `cifar10` 3.0.2 (same name, version, features and example keys, so the
same example order and the same pixels as `tfds.load("cifar10")`); only the two steps of the stock
builder that need TensorFlow are replaced: reading the archive (`tf.io.gfile` there, plain Python
here) and encoding the images as PNG (TensorFlow there, OpenCV here; PNG is lossless, so every
reader decodes the same pixels).
"""

import argparse
import os
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from cifar_jax import data
from cifar_jax.data import DataError

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
PREFIX = "cifar-10-batches-bin/"
SPLIT_FILES = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}
LABELS_FILE = "batches.meta.txt"
RECORD_BYTES = 1 + 32 * 32 * 3  # one label byte, then the image as 3 planes of 32x32 (CHW)


def read_archive(archive):
    """The binary CIFAR-10 archive as numpy, in file order, with its class names:
    ({"train": (images uint8 [N,32,32,3], labels uint8 [N]), "test": ...}, names)."""
    wanted = {PREFIX + name for names in SPLIT_FILES.values() for name in names}
    wanted.add(PREFIX + LABELS_FILE)
    blobs = {}
    try:
        # One pass in archive order: a .tar.gz cannot seek, so looking members up by name would
        # decompress it again for each one.
        with tarfile.open(archive) as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    blobs[member.name] = tar.extractfile(member).read()
    except (OSError, tarfile.TarError, EOFError) as e:
        reason = getattr(e, "strerror", None) or "not a .tar.gz, or damaged"
        raise DataError(f"cannot read CIFAR-10 archive {archive} ({reason}): pass the binary "
                        f"version, cifar-10-binary.tar.gz from {URL}") from None
    missing = sorted(wanted - blobs.keys())
    if missing:
        raise DataError(f"{archive} is not the binary CIFAR-10 archive (no {missing[0]}): pass "
                        f"cifar-10-binary.tar.gz from {URL}")
    splits = {}
    for split, names in SPLIT_FILES.items():
        images, labels = [], []
        for name in names:
            blob = blobs[PREFIX + name]
            if not blob or len(blob) % RECORD_BYTES:
                raise DataError(f"{archive}: {PREFIX + name} is {len(blob)} bytes, not a whole "
                                f"number of {RECORD_BYTES}-byte records: the archive is damaged, "
                                "download it again")
            records = np.frombuffer(blob, np.uint8).reshape(-1, RECORD_BYTES)
            labels.append(records[:, 0])
            images.append(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        splits[split] = (np.concatenate(images), np.concatenate(labels))
    names = [name for name in blobs[PREFIX + LABELS_FILE].decode().split("\n") if name]
    top = max(labels.max() for _, labels in splits.values())
    if len(names) != 10 or top >= 10:
        raise DataError(f"{archive} is not the binary CIFAR-10 archive ({len(names)} class names, "
                        f"labels up to {top}): pass cifar-10-binary.tar.gz from {URL}")
    return splits, names


def encode_png(images, chunk=1000):
    """Each image [32, 32, 3] (RGB uint8) as PNG bytes, the form tfds's Image feature stores.

    tfds encodes a numpy image with TensorFlow and a PIL one with PIL, which holds Python's lock
    (60,000 images: most of a prepare's time). PNG is lossless, so any encoder gives the same
    pixels back: OpenCV's lets go of the lock, so two threads encode at once, a chunk each.
    """
    import cv2

    def encode(part):  # OpenCV's channel order is BGR
        return [cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))[1].tobytes()
                for image in part]

    with ThreadPoolExecutor(2) as pool:
        parts = pool.map(encode, (images[i:i + chunk] for i in range(0, len(images), chunk)))
        return [png for part in parts for png in part]


def _builder_class():
    """TFDS's stock Cifar10 builder with a TensorFlow-free source reader (made on first use, so
    that importing this module does not import tensorflow_datasets)."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import cifar

    class Cifar10(cifar.Cifar10, skip_registration=True):
        """tfds's `cifar10`, read from `self.source` (or the download) in plain Python."""

        name = "cifar10"
        source = None  # read_archive's result, or None to download the archive

        def _split_generators(self, dl_manager):
            # The stock builder downloads and extracts (170 MB more on disk); reading the .tar.gz
            # directly needs only the download. The checksum check is the stock one.
            splits, names = self.source or read_archive(os.fspath(dl_manager.download(URL)))
            self.info.features["label"].names = names

            def generate(split):
                # The stock builder's keys (the running index over the split's files, in order)
                # and ids; tfds orders the examples by a hash of these keys, so the same keys
                # give the same order as tfds.load("cifar10").
                prefix = "train_" if split == "train" else "test_"
                images, labels = splits[split]
                for index, (png, label) in enumerate(zip(encode_png(images), labels)):
                    yield index, {"id": f"{prefix}{index:05d}", "label": int(label), "image": png}

            return {tfds.Split.TRAIN: generate("train"), tfds.Split.TEST: generate("test")}

    # tfds finds a builder's registered download checksums beside its module: this keeps the
    # stock cifar10 ones (url_checksums/cifar10.txt), so the download is verified.
    Cifar10.__module__ = cifar.__name__
    return Cifar10


def prepare(data_dir=None, archive=None):
    """Prepare `cifar10` in ArrayRecord in `data_dir` (default: $TFDS_DATA_DIR, else
    ~/tensorflow_datasets), from `archive` (a path to cifar-10-binary.tar.gz) or, without it, from
    the official archive downloaded there. Needs no TensorFlow; a no-op when already prepared.
    Returns the dataset's folder (data_dir/cifar10/3.0.2). A data dir where cifar10 is prepared
    in another format (TFRecord) is an error: tfds keeps one format per dataset folder."""
    import tensorflow_datasets as tfds

    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
    existing = tfds.builder("cifar10", data_dir=data_dir)
    if existing.info.splits:  # restored from the data dir's dataset_info.json: prepared
        if existing.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
            raise DataError(f"cifar10 is already prepared in {existing.data_dir_root} as "
                            f"{existing.info.file_format.value}: pass another data dir for the "
                            "ArrayRecord copy")
        return os.fspath(existing.data_path)
    builder = _builder_class()(data_dir=data_dir, file_format="array_record")
    if archive is not None:
        archive = os.path.expanduser(os.fspath(archive))
        if not os.path.isfile(archive):
            raise DataError(f"CIFAR-10 archive {archive} does not exist: pass the path of "
                            f"cifar-10-binary.tar.gz (from {URL})")
        # Read (and checked) before tfds starts, which would add its own lines to an error.
        builder.source = read_archive(archive)
    elif not data._reachable(URL):
        raise DataError(f"cannot download CIFAR-10 from {URL} (no network): pass the path of "
                        "cifar-10-binary.tar.gz already on disk (--archive)")
    # try_download_gcs=False: tfds would otherwise first look for its own prepared copy (TFRecord)
    # in its GCS bucket, rather than build from the archive.
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return os.fspath(builder.data_path)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m cifar_jax.prepare",
        description="Prepare CIFAR-10 as a TFDS cifar10 data dir in ArrayRecord (no TensorFlow).")
    parser.add_argument("--data-dir", default=None,
                        help="where to prepare it (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)")
    parser.add_argument("--archive", default=None,
                        help=f"cifar-10-binary.tar.gz already on disk (default: download {URL})")
    args = parser.parse_args(argv)
    try:
        path = prepare(args.data_dir, args.archive)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"cifar10 prepared in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
