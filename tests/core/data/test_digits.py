import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits

from core.data import DataError, load_dataset
from core.data.digits import load_digits


def test_stratified_80_20_split():
    train, test = load_dataset("digits", None, "train"), load_dataset("digits", None, "test")
    assert (len(train), len(test)) == (1438, 359)
    assert train.images.shape[1:] == (1, 8, 8) and train.images.dtype == np.uint8
    assert train.images.max() == 255 and train.images.min() == 0
    per_class = np.bincount(test.labels, minlength=10) / np.bincount(
        np.concatenate([train.labels, test.labels]), minlength=10
    )
    assert np.all(np.abs(per_class - 0.2) < 0.01)


def test_split_is_a_disjoint_cover_of_sklearn_images():
    bunch = sk_load_digits()
    scaled = np.rint(bunch.images * 255 / 16).astype(np.uint8)
    expected = sorted(map(bytes, scaled))
    both = np.concatenate([load_digits("train").images, load_digits("test").images])[:, 0]
    assert sorted(map(bytes, both)) == expected


def test_deterministic_and_root_ignored(tmp_path):
    a = load_digits("train")
    b = load_dataset("digits", tmp_path / "anything", "train")
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)


def test_unknown_split():
    with pytest.raises(DataError, match=r"unknown split 'val'; use train or test"):
        load_dataset("digits", None, "val")
