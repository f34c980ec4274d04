"""Preparing CIFAR-10 without TensorFlow, from a tiny archive in the official binary format."""

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from cifar_jax import cache, data, prepare

TRAIN_PER_BATCH = 3  # x 5 batches: 15 train images
TEST_SIZE = 4


def write_archive(path, seed=0, names=data.CLASS_NAMES, skip=()):
    """A cifar-10-binary.tar.gz in the official layout with random images; returns what it holds
    in file order: {"train": (images [N,32,32,3], labels [N]), "test": ...}."""
    rng = np.random.default_rng(seed)
    written, members = {}, {}
    for split, files in prepare.SPLIT_FILES.items():
        per_file = TRAIN_PER_BATCH if split == "train" else TEST_SIZE
        images = rng.integers(0, 256, (len(files) * per_file, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, len(files) * per_file, dtype=np.uint8)
        written[split] = images, labels
        for i, name in enumerate(files):
            part = slice(i * per_file, (i + 1) * per_file)
            chw = images[part].transpose(0, 3, 1, 2).reshape(per_file, -1)  # 3 planes of 32x32
            members[name] = np.concatenate([labels[part, None], chw], axis=1).tobytes()
    members[prepare.LABELS_FILE] = ("\n".join(names) + "\n\n").encode()  # as the real one ends
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            if name not in skip:
                info = tarfile.TarInfo(prepare.PREFIX + name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
    return written


def tfds_order(split, n):
    """The order tfds gives a split's examples: sorted by md5(split name + key), the keys being
    the stock cifar10 builder's (0..n-1, in file order)."""
    salt = hashlib.md5(split.encode())

    def rank(key):
        h = salt.copy()
        h.update(str(key).encode())
        return int(h.hexdigest(), 16)

    return sorted(range(n), key=rank)


@pytest.fixture(scope="session")  # not per module: xdist may interleave modules
def prepared(tmp_path_factory):
    """(data dir, archive, what the archive holds) once prepared from the tiny archive."""
    root = tmp_path_factory.mktemp("prepared")
    archive = root / "cifar-10-binary.tar.gz"
    written = write_archive(archive)
    prepare.prepare(root / "tfds", archive=archive)
    return root / "tfds", archive, written


def test_prepared_archive_reads_back_exactly_in_tfds_order(prepared):
    data_dir, _, written = prepared
    splits = data.load_cifar10(str(data_dir), download=False)
    assert set(splits) == {"train", "test"}
    for split, (images, labels) in written.items():
        order = tfds_order(split, len(labels))
        got_images, got_labels = splits[split]
        assert got_images.dtype == np.uint8 and got_labels.dtype == np.int32
        np.testing.assert_array_equal(got_images, images[order])
        np.testing.assert_array_equal(got_labels, labels[order])


def test_decoding_in_threads_keeps_the_order(prepared):
    """Chunks of 2 PNGs decoded in two threads while the next ones are read: same order."""
    import tensorflow_datasets as tfds

    data_dir, _, written = prepared
    builder = tfds.builder("cifar10", data_dir=str(data_dir))
    source = builder.as_data_source(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    assert isinstance(source[0]["image"], bytes)
    images, labels = data._read_source(source, chunk=2,
                                       decode=builder.info.features["image"].decode_example_np)
    order = tfds_order("train", len(written["train"][1]))
    assert len(order) == 15
    np.testing.assert_array_equal(images, written["train"][0][order])
    np.testing.assert_array_equal(labels, written["train"][1][order])


def test_prepared_dir_is_the_stock_cifar10_in_array_record(prepared):
    data_dir, _, _ = prepared
    version = data_dir / "cifar10" / "3.0.2"
    info = json.loads((version / "dataset_info.json").read_text())
    assert info["name"] == "cifar10" and info["version"] == "3.0.2"
    assert info["fileFormat"] == "array_record"
    assert {s["name"]: int(s["shardLengths"][0]) for s in info["splits"]} == {
        "train": 5 * TRAIN_PER_BATCH, "test": TEST_SIZE}
    assert (version / "label.labels.txt").read_text().split() == list(data.CLASS_NAMES)
    import tensorflow_datasets as tfds

    example = tfds.data_source("cifar10", data_dir=str(data_dir), split="test")[0]
    assert example["id"].decode().startswith("test_")


def test_preparing_again_is_a_no_op(prepared):
    data_dir, archive, _ = prepared
    before = {p: p.stat().st_mtime_ns for p in (data_dir / "cifar10").rglob("*")}
    assert prepare.prepare(data_dir, archive=archive) == str(data_dir / "cifar10" / "3.0.2")
    assert {p: p.stat().st_mtime_ns for p in (data_dir / "cifar10").rglob("*")} == before


def test_load_prepares_from_the_archive_without_network(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    written = write_archive(archive, seed=1)

    def no_network(url):
        raise AssertionError(f"{url} was contacted")

    monkeypatch.setattr(data, "_reachable", no_network)
    os.mkdir(tmp_path / "tfds")
    splits = data.load_cifar10(str(tmp_path / "tfds"), download=False, archive=str(archive))
    for split, (images, labels) in written.items():
        order = tfds_order(split, len(labels))
        np.testing.assert_array_equal(splits[split][0], images[order])
        np.testing.assert_array_equal(splits[split][1], labels[order])


# As if TensorFlow were not installed: importing it fails, and find_spec (how etils and tfds ask
# whether it is there) does not find it.
NO_TENSORFLOW = """
import importlib.abc, importlib.util, sys

def is_tensorflow(name):
    return name.split(".")[0] == "tensorflow"

class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if is_tensorflow(name):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTensorFlow())
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, *a, **k: None if is_tensorflow(name) else find_spec(name, *a, **k)
"""


def run_without_tensorflow(script):
    """`script` run by this Python in a process where TensorFlow cannot be imported."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", NO_TENSORFLOW + script], capture_output=True, check=False,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": repo})


def test_preparing_and_loading_need_no_tensorflow(tmp_path):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    write_archive(archive)
    result = run_without_tensorflow(f"""
from cifar_jax import cache, data, prepare
prepare.prepare({str(tmp_path / "tfds")!r}, archive={str(archive)!r})
splits = data.load_cifar10({str(tmp_path / "tfds")!r}, download=False)
print(len(splits["train"][1]), len(splits["test"][1]), "tensorflow" in sys.modules)
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1].split() == [str(5 * TRAIN_PER_BATCH), str(TEST_SIZE), "False"]


def test_missing_archive_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match=r"CIFAR-10 archive .*nowhere.tar.gz does not exist: "):
        prepare.prepare(tmp_path, archive=tmp_path / "nowhere.tar.gz")


@pytest.mark.parametrize("content, message", [
    (b"not a tar file", r"cannot read CIFAR-10 archive"),
    (None, r"is not the binary CIFAR-10 archive \(no cifar-10-batches-bin/test_batch.bin\)"),
])
def test_a_wrong_archive_is_a_clear_error(tmp_path, content, message):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    if content is None:
        write_archive(archive, skip={"test_batch.bin"})
    else:
        archive.write_bytes(content)
    with pytest.raises(data.DataError, match=message) as error:
        prepare.prepare(tmp_path / "tfds", archive=archive)
    assert "\n" not in str(error.value)
    assert not (tmp_path / "tfds" / "cifar10" / "3.0.2").exists()


def test_a_data_dir_prepared_as_tfrecord_is_left_alone(prepared, tmp_path):
    version = tmp_path / "cifar10" / "3.0.2"
    version.mkdir(parents=True)
    info = json.loads((prepared[0] / "cifar10" / "3.0.2" / "dataset_info.json").read_text())
    (version / "dataset_info.json").write_text(json.dumps({**info, "fileFormat": "tfrecord"}))
    with pytest.raises(data.DataError, match=r"cifar10 is already prepared in .* as tfrecord: pass "
                                             r"another data dir for the ArrayRecord copy"):
        prepare.prepare(tmp_path, archive=prepared[1])
    assert sorted(os.listdir(version)) == ["dataset_info.json"]


def test_offline_without_archive_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_reachable", lambda url: False)
    with pytest.raises(data.DataError, match=r"cannot download CIFAR-10 .* \(no network\): pass "):
        prepare.prepare(tmp_path)


def test_cli_prepares_and_reports_errors_in_one_line(tmp_path, capsys):
    archive = tmp_path / "cifar-10-binary.tar.gz"
    write_archive(archive)
    assert prepare.main(["--data-dir", str(tmp_path / "tfds"), "--archive", str(archive)]) == 0
    out = capsys.readouterr().out  # tfds's lines first
    assert out.splitlines()[-1] == f"cifar10 prepared in {tmp_path / 'tfds'}/cifar10/3.0.2"
    assert prepare.main(["--data-dir", str(tmp_path / "x"), "--archive", str(tmp_path / "no")]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: CIFAR-10 archive {tmp_path / 'no'} does not exist: pass the path of "
        f"cifar-10-binary.tar.gz (from {prepare.URL})")


def test_tfrecord_dir_without_tensorflow_says_how_to_prepare(prepared, tmp_path):
    # A TFRecord data dir as tfds.load leaves it, as far as the reader can tell: its
    # dataset_info.json says tfrecord.
    ours = prepared[0] / "cifar10" / "3.0.2"
    version = tmp_path / "cifar10" / "3.0.2"
    version.mkdir(parents=True)
    info = json.loads((ours / "dataset_info.json").read_text())
    (version / "dataset_info.json").write_text(json.dumps({**info, "fileFormat": "tfrecord"}))
    (version / "features.json").write_text((ours / "features.json").read_text())
    result = run_without_tensorflow(f"""
from cifar_jax import data
try:
    data.load_cifar10({str(tmp_path)!r}, download=False)
except data.DataError as e:
    print(e)
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"CIFAR-10 in {tmp_path} is prepared as TFRecord, which needs TensorFlow: pip install "
        "'cifar_jax[tfrecord]', or prepare ArrayRecord in another folder (python -m "
        "cifar_jax.prepare --data-dir NEW_DIR) and pass --data-dir NEW_DIR")


def test_same_examples_as_the_stock_tfds_builder_through_tensorflow(prepared, tmp_path, monkeypatch):
    """The stock builder (TensorFlow reads the archive and encodes the PNGs; TFRecord), read by the
    TensorFlow path, gives exactly what the TensorFlow-free builder and reader give."""
    pytest.importorskip("tensorflow")
    import tensorflow_datasets as tfds

    data_dir, archive, _ = prepared
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "extracted", filter="data")
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract",
                        lambda self, url: str(tmp_path / "extracted"))
    stock = tfds.builder("cifar10", data_dir=str(tmp_path / "stock"))
    stock.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    assert stock.info.file_format == tfds.core.FileFormat.TFRECORD
    ours = data.load_cifar10(str(data_dir), download=False)
    theirs = data.load_cifar10(str(tmp_path / "stock"), download=False)
    for split in ("train", "test"):
        np.testing.assert_array_equal(ours[split][0], theirs[split][0])
        np.testing.assert_array_equal(ours[split][1], theirs[split][1])


@pytest.mark.parametrize("count", [2, 4])
def test_each_process_reads_a_share_and_the_shares_make_the_split(prepared, monkeypatch, count):
    import jax
    import tensorflow_datasets as tfds

    from cifar_jax import parallel

    data_dir, _, _ = prepared
    whole = data.load_cifar10(str(data_dir), download=False)
    builder = tfds.builder("cifar10", data_dir=str(data_dir))
    monkeypatch.setattr(jax, "process_count", lambda: count)
    for split in ("train", "test"):
        shares = []
        for index in range(count):
            monkeypatch.setattr(jax, "process_index", lambda index=index: index)
            shares.append(data._read_source(builder.as_data_source(split=parallel.process_split(split))))
        assert max(len(s[1]) for s in shares) - min(len(s[1]) for s in shares) <= 1
        np.testing.assert_array_equal(np.concatenate([s[0] for s in shares]), whole[split][0])
        np.testing.assert_array_equal(np.concatenate([s[1] for s in shares]), whole[split][1])


def test_without_archive_the_official_one_is_downloaded_and_verified(tmp_path, monkeypatch):
    """tfds's download manager fetches the archive (here from a local server standing in for
    www.cs.toronto.edu), and the official one is checked against tfds's registered checksum."""
    import functools
    import http.server
    import threading

    archive = tmp_path / "serve" / "cifar-10-binary.tar.gz"
    archive.parent.mkdir()
    written = write_archive(archive, seed=2)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=archive.parent)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(prepare, "URL", f"http://127.0.0.1:{server.server_port}/{archive.name}")
        monkeypatch.setattr(data, "_reachable", lambda url: True)
        os.mkdir(tmp_path / "tfds")
        splits = data.load_cifar10(str(tmp_path / "tfds"))
    finally:
        server.shutdown()
    downloaded = list((tmp_path / "tfds" / "downloads").rglob("*cifar-10-binary*.tar.gz"))
    assert [p.read_bytes() for p in downloaded] == [archive.read_bytes()]
    for split, (images, labels) in written.items():
        order = tfds_order(split, len(labels))
        np.testing.assert_array_equal(splits[split][0], images[order])
        np.testing.assert_array_equal(splits[split][1], labels[order])
    official = prepare._builder_class().url_infos["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
    assert (official.size, official.checksum) == (
        170052171, "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd")


# --- the decoded-array cache (cifar_jax.cache) ------------------------------------------------


@pytest.fixture
def own_prepared(tmp_path, monkeypatch):
    """A prepared data dir of this test's own, and an empty user cache dir."""
    written = write_archive(tmp_path / "archive.tar.gz")
    prepare.prepare(tmp_path / "tfds", archive=tmp_path / "archive.tar.gz")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user-cache"))
    return tmp_path / "tfds", written


def decoding_forbidden(monkeypatch):
    def fail(source, chunk=1000):
        raise AssertionError("decoded, where the cache should have served")
    monkeypatch.setattr(data, "_read_source", fail)


def test_the_decoded_splits_are_cached_beside_the_dataset_and_read_back(own_prepared, monkeypatch,
                                                                        capsys):
    data_dir, _ = own_prepared
    first = data.load_cifar10(str(data_dir), download=False)
    folder = data_dir / "cifar10" / "3.0.2" / "cifar_jax-cache"
    assert sorted(os.listdir(folder)) == [f"cifar10-3.0.2-{split}.{kind}" for split in
                                          ("test", "train") for kind in
                                          ("images.npy", "json", "labels.npy")]
    decoding_forbidden(monkeypatch)
    again = data.load_cifar10(str(data_dir), download=False)
    for split in ("train", "test"):
        np.testing.assert_array_equal(again[split][0], first[split][0])
        np.testing.assert_array_equal(again[split][1], first[split][1])
        assert again[split][1].dtype == np.int32
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("damage, why", [
    ("pixels", "its checksum does not match"),
    ("source", "the dataset's files have changed since"),
    ("truncated", "cannot load an array"),
])
def test_a_cache_that_does_not_match_is_decoded_again_with_one_warning(own_prepared, damage, why,
                                                                       capsys):
    data_dir, written = own_prepared
    data.load_cifar10(str(data_dir), download=False)
    version = data_dir / "cifar10" / "3.0.2"
    images = version / "cifar_jax-cache" / "cifar10-3.0.2-train.images.npy"
    if damage == "pixels":
        blob = bytearray(images.read_bytes())
        blob[-1] ^= 0xFF
        images.write_bytes(bytes(blob))
    elif damage == "source":
        shard = next(version.glob("cifar10-train.array_record*"))
        os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    else:
        images.write_bytes(images.read_bytes()[:1000])
    splits = data.load_cifar10(str(data_dir), download=False)
    order = tfds_order("train", len(written["train"][1]))
    np.testing.assert_array_equal(splits["train"][0], written["train"][0][order])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"warning: the cached cifar10 train in {version / 'cifar_jax-cache'} cannot be used (")
    assert err[0].endswith("): decoding the dataset again")
    if damage != "truncated":
        assert why in err[0]
    data.load_cifar10(str(data_dir), download=False)  # the rebuilt entry serves, silently
    assert capsys.readouterr().err == ""


def test_an_unwritable_data_dir_caches_in_the_users_cache_dir_and_failed_writes_leave_nothing(
        own_prepared, monkeypatch, tmp_path):
    data_dir, _ = own_prepared
    beside = data_dir / "cifar10" / "3.0.2" / "cifar_jax-cache"
    real_mkstemp = cache.tempfile.mkstemp

    def mkstemp(dir, **kwargs):
        if str(beside) in dir:
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(dir=dir, **kwargs)

    monkeypatch.setattr(cache.tempfile, "mkstemp", mkstemp)
    data.load_cifar10(str(data_dir), download=False)
    users = list((tmp_path / "user-cache" / "cifar_jax" / "data").iterdir())
    assert len(users) == 1 and len(os.listdir(users[0])) == 6 and not os.listdir(beside)
    decoding_forbidden(monkeypatch)
    data.load_cifar10(str(data_dir), download=False)  # served from the user's cache dir

    def no_space(file, array, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "other-cache"))
    monkeypatch.setattr(np, "save", no_space)
    shutil.rmtree(beside)
    data.load_cifar10(str(data_dir), download=False)  # decoded, and nothing half-written anywhere
    assert not os.listdir(beside)
    assert all(not files for _, _, files in os.walk(tmp_path / "other-cache"))
