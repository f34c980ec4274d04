"""The decoded splits kept as uint8 `.npy` files, so that a run's start reads CIFAR-10 in well
under a second instead of decoding 60,000 PNGs again.

The cache sits beside the prepared dataset (`DATA_DIR/cifar10/3.0.2/cifar_jax-cache/`), or,
where that folder cannot be written, in the user's cache dir (`$XDG_CACHE_HOME/cifar_jax/data`,
else `~/.cache/cifar_jax/data`), one entry per dataset, version and split (a process's part of
a split in a multi-process run). An entry records what it was made from (the dataset files'
sizes and times) and a checksum of its arrays: one that does not match is decoded again, with
one warning, and never used as it is. Entries are written to a temporary file and renamed, so a
failed write (no space, no permission) leaves nothing behind.
"""

import hashlib
import json
import os
import sys
import tempfile
import zlib

import numpy as np

FOLDER = "cifar_jax-cache"


def _user_dir(builder):
    root = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    where = hashlib.sha256(os.path.abspath(str(builder.data_dir)).encode()).hexdigest()[:12]
    return os.path.join(root, "cifar_jax", "data", f"{builder.info.name}-{where}")


def _folders(builder):
    """Where an entry may be: beside the dataset, then in the user's cache dir."""
    return [os.path.join(str(builder.data_dir), FOLDER), _user_dir(builder)]


def _name(builder, split):
    """'cifar10-3.0.2-train' ('...-train[0:25000]' for a process's part)."""
    return f"{builder.info.name}-{builder.info.version}-{split}"


def _source(builder, split):
    """What the entry is made from: the split's files with their sizes and modification times;
    None where the dataset has no files of its own to read (tfds's mock data)."""
    if not builder.info.splits:
        return None
    try:
        paths = builder.info.splits[split].filepaths
        return {os.path.basename(str(p)): [os.stat(str(p)).st_size, os.stat(str(p)).st_mtime_ns]
                for p in paths}
    except (KeyError, OSError, ValueError):
        return None


def _checksum(images, labels):
    return zlib.crc32(labels, zlib.crc32(images))


def load(builder, split):
    """(images, labels) of `split` from the cache, or None: no entry, or a stale one (warned
    about, then ignored)."""
    source = _source(builder, split)
    if source is None:
        return None
    for folder in _folders(builder):
        meta_path = os.path.join(folder, _name(builder, split) + ".json")
        if not os.path.exists(meta_path):
            continue
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if meta.get("source") != source:
                raise ValueError("the dataset's files have changed since")
            images = np.load(os.path.join(folder, meta["images"]), mmap_mode="r")
            labels = np.load(os.path.join(folder, meta["labels"]))
            if images.shape != (meta["examples"], 32, 32, 3) or labels.shape != (meta["examples"],):
                raise ValueError("its arrays have the wrong shape")
            if _checksum(images, labels) != meta["checksum"]:
                raise ValueError("its checksum does not match")
            return images, labels
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"warning: the cached {builder.info.name} {split} in {folder} cannot be used "
                  f"({e}): decoding the dataset again", file=sys.stderr, flush=True)
    return None


def save(builder, split, images, labels):
    """Write the entry of `split`, beside the dataset or else in the user's cache dir; returns
    its folder, or None where neither could take it (the run goes on without)."""
    source = _source(builder, split)
    if source is None:
        return None
    name = _name(builder, split)
    meta = {"dataset": builder.info.name, "version": str(builder.info.version), "split": split,
            "examples": len(labels), "source": source, "checksum": _checksum(images, labels),
            "images": name + ".images.npy", "labels": name + ".labels.npy"}
    for folder in _folders(builder):
        written = []
        try:
            os.makedirs(folder, exist_ok=True)
            for filename, array in ((meta["images"], images), (meta["labels"], labels)):
                written.append(_atomic(folder, filename, lambda f, a=array: np.save(f, a)))
            _atomic(folder, name + ".json", lambda f: f.write(json.dumps(meta).encode()))
            return folder
        except OSError:
            for path in written:  # this folder holds nothing half-made: try the next one
                os.remove(path)
    return None


def _atomic(folder, filename, write):
    """Write `filename` in `folder` through a temporary file renamed into place."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{filename}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as an ordinary file, not mkstemp's owner-only
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, os.path.join(folder, filename))
    except BaseException:
        os.remove(tmp)
        raise
    return os.path.join(folder, filename)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
