import io
import pickle

import numpy as np
import pytest

from core.data import DataError, load_dataset
from core.data.cifar import CIFAR_FOLDER

from .conftest import write_cifar_batch


@pytest.fixture
def cifar_dir(tmp_path):
    folder = tmp_path / CIFAR_FOLDER
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", 4, seed=i)
    write_cifar_batch(folder / "test_batch", 3, seed=9)
    return tmp_path


def test_loads_train_and_test(cifar_dir):
    train = load_dataset("cifar10", cifar_dir, "train")
    test = load_dataset("cifar10", cifar_dir, "test")
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == np.uint8
    assert test.images.shape == (3, 3, 32, 32) and train.in_shape == (3, 32, 32)
    rows, labels = write_cifar_batch(cifar_dir / "again", 4, seed=2)  # same as data_batch_2
    np.testing.assert_array_equal(train.labels[4:8], labels)
    # row layout: 1024 red, 1024 green, 1024 blue, each 32x32 row-major
    c, i, j = 2, 5, 31
    assert train.images[4 + 1, c, i, j] == rows[1, c * 1024 + i * 32 + j]


def test_files_directly_in_root(tmp_path):
    write_cifar_batch(tmp_path / "test_batch", 2)
    assert len(load_dataset("cifar10", tmp_path, "test")) == 2


def test_missing_batches(tmp_path):
    write_cifar_batch(tmp_path / CIFAR_FOLDER / "data_batch_1", 2)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path, "train")
    msg = str(info.value)
    assert "data_batch_2, data_batch_3, data_batch_4, data_batch_5" in msg
    assert f"bitfed-data download cifar10 --root {tmp_path}" in msg


def test_truncated_pickle(cifar_dir):
    path = cifar_dir / CIFAR_FOLDER / "test_batch"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"test_batch: truncated or corrupt CIFAR-10 pickle"):
        load_dataset("cifar10", cifar_dir, "test")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_pickle_with_code_is_rejected(cifar_dir):
    path = cifar_dir / CIFAR_FOLDER / "test_batch"
    buf = io.BytesIO()
    pickle.dump({b"data": _Evil(), b"labels": []}, buf, protocol=2)
    path.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match=r"global posix.system is not allowed|not allowed"):
        load_dataset("cifar10", cifar_dir, "test")


def test_wrong_row_length(cifar_dir):
    path = cifar_dir / CIFAR_FOLDER / "test_batch"
    with path.open("wb") as f:
        pickle.dump({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(DataError, match=r"test_batch: wrong size: .*\(2, 3000\)"):
        load_dataset("cifar10", cifar_dir, "test")


def test_not_a_batch_dict(cifar_dir):
    path = cifar_dir / CIFAR_FOLDER / "test_batch"
    path.write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    with pytest.raises(DataError, match=r"not a CIFAR-10 batch"):
        load_dataset("cifar10", cifar_dir, "test")
