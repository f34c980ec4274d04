import jax
import numpy as np
import pytest

from cifar_jax import data


def test_batch_indices_keep_the_last_partial_batch():
    idx, mask = data.batch_indices(50_000, 32, jax.random.key(0))
    assert idx.shape == mask.shape == (1563, 32)  # 1,562 x 32 + 16
    assert float(mask.sum()) == 50_000
    assert float(mask[-1].sum()) == 16
    real = np.asarray(idx)[np.asarray(mask) > 0]
    np.testing.assert_array_equal(np.sort(real), np.arange(50_000))


def test_shuffle_depends_only_on_the_key():
    a, _ = data.batch_indices(100, 32, jax.random.key(1))
    b, _ = data.batch_indices(100, 32, jax.random.key(1))
    c, _ = data.batch_indices(100, 32, jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    ordered, _ = data.batch_indices(100, 32)
    np.testing.assert_array_equal(np.asarray(ordered).reshape(-1)[:100], np.arange(100))


def test_to_float_scales_to_unit_interval():
    x = data.to_float(np.array([0, 128, 255], np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [0.0, 128 / 255, 1.0])


def test_load_cifar10_gives_uint8_images_and_int_labels(mock_cifar10):
    splits = data.load_cifar10()
    for split in ("train", "test"):
        images, labels = splits[split]
        assert images.shape == (70, 32, 32, 3) and images.dtype == np.uint8
        assert labels.shape == (70,) and labels.dtype == np.int32
        assert labels.min() >= 0 and labels.max() <= 9


def test_mock_data_is_read_without_tensorflow():
    from test_prepare import run_without_tensorflow

    result = run_without_tensorflow("""
import tensorflow_datasets as tfds
from cifar_jax import data
with tfds.testing.mock_data(num_examples=5):
    splits = data.load_cifar10()
print(splits["train"][0].shape, splits["test"][1].dtype, "tensorflow" in sys.modules)
""")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(5, 32, 32, 3) int32 False"


def test_missing_data_dir_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match=r"data dir .*nowhere does not exist: point --data-dir"):
        data.load_cifar10(str(tmp_path / "nowhere"))


def test_unprepared_data_dir_without_download_is_a_clear_error(tmp_path):
    with pytest.raises(data.DataError, match=r"CIFAR-10 is not prepared in .*: pass --data-dir"):
        data.load_cifar10(str(tmp_path), download=False)


def test_unprepared_data_dir_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_reachable", lambda url: False)
    with pytest.raises(data.DataError, match=r"cannot be downloaded \(no network\)"):
        data.load_cifar10(str(tmp_path))
