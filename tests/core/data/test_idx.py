import gzip

import numpy as np
import pytest

from core.data import DataError, load_dataset
from core.data.idx import read_idx, write_idx

from .conftest import write_mnist


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_loads_raw_and_gz(tmp_path, gz, name):
    images, labels = write_mnist(tmp_path, "train", 13, gz=gz, seed=3)
    data = load_dataset(name, tmp_path, "train")
    assert data.name == name and data.num_classes == 10
    assert data.images.dtype == np.uint8 and data.images.shape == (13, 1, 28, 28)
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.images[:, 0], images)
    np.testing.assert_array_equal(data.labels, labels)
    assert data.in_shape == (1, 28, 28)


def test_test_split_reads_t10k_files(mnist_dir):
    assert len(load_dataset("mnist", mnist_dir, "test")) == 5
    assert len(load_dataset("mnist", mnist_dir, "train")) == 12


def test_round_trip_header(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a", arr)
    raw = (tmp_path / "a").read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3]) and raw[4:8] == (2).to_bytes(4, "big")
    np.testing.assert_array_equal(read_idx(tmp_path / "a", 3), arr)


def test_bad_magic(tmp_path):
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    data = bytearray(path.read_bytes())
    data[2] = 0x0D  # float elements
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: bad magic 00000d03"):
        load_dataset("mnist", tmp_path, "train")


def test_labels_file_in_place_of_images(tmp_path):
    write_mnist(tmp_path, gz=False)
    labels = (tmp_path / "train-labels-idx1-ubyte").read_bytes()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(labels)
    with pytest.raises(DataError, match=r"bad magic 00000801; expected 00000803"):
        load_dataset("mnist", tmp_path, "train")


def test_truncated_raw(tmp_path):
    write_mnist(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: wrong size: .* truncated"):
        load_dataset("mnist", tmp_path, "train")


def test_truncated_gz(tmp_path):
    write_mnist(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: truncated or corrupt gzip"):
        load_dataset("mnist", tmp_path, "train")


def test_gz_holding_garbage(tmp_path):
    write_mnist(tmp_path, gz=True)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08"))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz: bad magic"):
        load_dataset("mnist", tmp_path, "train")


def test_images_labels_count_mismatch(tmp_path):
    write_mnist(tmp_path, n=12, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, dtype=np.uint8))
    with pytest.raises(DataError, match=r"12 images but train-labels-idx1-ubyte has 11 labels"):
        load_dataset("mnist", tmp_path, "train")


def test_label_out_of_range(tmp_path):
    write_mnist(tmp_path, n=4, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 11], dtype=np.uint8))
    with pytest.raises(DataError, match=r"label 11 outside 0..9"):
        load_dataset("mnist", tmp_path, "train")


def test_missing_file_names_files_and_command(tmp_path):
    write_mnist(tmp_path, "train")
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", tmp_path, "train")
    msg = str(info.value)
    assert "\n" not in msg
    assert "train-labels-idx1-ubyte[.gz]" in msg and "train-images" not in msg
    assert f"bitfed-data download fashion-mnist --root {tmp_path}" in msg


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"mnist: folder does not exist: expected train-images"):
        load_dataset("mnist", tmp_path / "nope", "train")


def test_real_mnist(mnist_root):
    train = load_dataset("mnist", mnist_root, "train")
    test = load_dataset("mnist", mnist_root, "test")
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    counts = np.bincount(train.labels, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert train.images.max() == 255 and train.images.min() == 0
