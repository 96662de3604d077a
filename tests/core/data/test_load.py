import numpy as np
import pytest

from core.data import DataError, ImageDataset, load_dataset

from .conftest import write_mnist


def test_unknown_name():
    with pytest.raises(DataError, match=r"unknown dataset 'imagenet'; choose one of digits, mnist"):
        load_dataset("imagenet", "/tmp", "train")


@pytest.mark.parametrize("root", [None, ""])
def test_root_required_except_digits(root):
    with pytest.raises(DataError, match=r"cifar10: no root folder given; set dataset.root=DIR"):
        load_dataset("cifar10", root, "train")


def test_cache_returns_read_only_and_sees_changes(tmp_path):
    write_mnist(tmp_path, n=6)
    a = load_dataset("mnist", tmp_path, "train")
    assert load_dataset("mnist", str(tmp_path), "train") is a
    with pytest.raises(ValueError):
        a.images[0, 0, 0, 0] = 1
    write_mnist(tmp_path, n=7)  # the files change: the cache must not serve the old arrays
    assert len(load_dataset("mnist", tmp_path, "train")) == 7


def test_image_dataset_validates():
    with pytest.raises(ValueError, match=r"images must be uint8"):
        ImageDataset(np.zeros((2, 1, 4, 4), np.float32), np.zeros(2, np.int64), 10, "x")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        ImageDataset(np.zeros((2, 1, 4, 4), np.uint8), np.array([0, 10]), 10, "x")
    with pytest.raises(ValueError, match=r"labels must be int64"):
        ImageDataset(np.zeros((2, 1, 4, 4), np.uint8), np.zeros(3, np.int64), 10, "x")
