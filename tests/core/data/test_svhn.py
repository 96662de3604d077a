import numpy as np
import pytest
from scipy.io import savemat

from core.data import DataError, load_dataset


def write_svhn(path, n, seed=0):
    x = np.random.default_rng(seed).integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 = digit 0
    savemat(path, {"X": x, "y": y})
    return x, y


def test_loads_and_maps_label_10_to_0(tmp_path):
    x, y = write_svhn(tmp_path / "train_32x32.mat", 11)
    data = load_dataset("svhn", tmp_path, "train")
    assert data.images.shape == (11, 3, 32, 32) and data.images.dtype == np.uint8
    assert data.labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    # X is (H, W, C, N)
    assert data.images[7, 2, 5, 30] == x[5, 30, 2, 7]
    np.testing.assert_array_equal(data.images[3], x[..., 3].transpose(2, 0, 1))


def test_extra_is_appended_to_train_only(tmp_path):
    write_svhn(tmp_path / "train_32x32.mat", 4, seed=1)
    write_svhn(tmp_path / "test_32x32.mat", 3, seed=2)
    x_extra, _ = write_svhn(tmp_path / "extra_32x32.mat", 5, seed=3)
    assert len(load_dataset("svhn", tmp_path, "train")) == 4
    both = load_dataset("svhn", tmp_path, "train", svhn_extra=True)
    assert len(both) == 9
    np.testing.assert_array_equal(both.images[4:], x_extra.transpose(3, 2, 0, 1))
    assert len(load_dataset("svhn", tmp_path, "test", svhn_extra=True)) == 3


def test_missing_extra_names_flag(tmp_path):
    write_svhn(tmp_path / "train_32x32.mat", 2)
    with pytest.raises(DataError) as info:
        load_dataset("svhn", tmp_path, "train", svhn_extra=True)
    msg = str(info.value)
    assert "extra_32x32.mat" in msg and "train_32x32" not in msg
    assert f"bitfed-data download svhn --root {tmp_path} --svhn-extra" in msg


def test_corrupt_mat(tmp_path):
    (tmp_path / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(50))
    with pytest.raises(DataError, match=r"test_32x32.mat: truncated or corrupt .mat file"):
        load_dataset("svhn", tmp_path, "test")


def test_truncated_mat(tmp_path):
    path = tmp_path / "test_32x32.mat"
    write_svhn(path, 20)
    path.write_bytes(path.read_bytes()[:30000])
    with pytest.raises(DataError, match=r"test_32x32.mat: truncated or corrupt"):
        load_dataset("svhn", tmp_path, "test")


def test_wrong_shape(tmp_path):
    savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": [[1], [2]]})
    with pytest.raises(DataError, match=r"wrong size: X is uint8 \(28, 28, 1, 2\)"):
        load_dataset("svhn", tmp_path, "test")
