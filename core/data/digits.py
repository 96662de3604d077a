"""scikit-learn's bundled 8x8 digits: the embedded, offline default dataset.

1,797 images of 8x8 pixels with 17 gray levels (0..16), 10 classes. They ship inside
scikit-learn, so a run needs no download and no root folder.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from core.data.dataset import ImageDataset
from core.data.errors import DataError

__all__ = ["load_digits", "stratified_split", "TEST_FRACTION", "digits_csv_path"]

TEST_FRACTION = 0.2  # 80/20 train/test, stratified per class
SPLIT_SEED = 0  # fixed: the split is part of the dataset's definition


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices so each class keeps the same share in both parts.

    Per class c with n_c examples, ``round(test_fraction * n_c)`` randomly chosen indices go to the
    test part (seeded permutation), the rest to train.

    Returns
    -------
    tuple of np.ndarray
        (train indices, test indices), each sorted ascending, disjoint, covering all indices.
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(split: str) -> ImageDataset:
    """Load the train or test part of scikit-learn's digits as uint8 (N, 1, 8, 8) images.

    Gray levels 0..16 are mapped to 0..255 by ``round(v * 255 / 16)``; the split is the
    deterministic stratified 80/20 of :func:`stratified_split` with seed 0 (1,438 / 359 images).
    """
    if split not in ("train", "test"):
        raise DataError(f"digits: unknown split {split!r}; use train or test")
    table = np.loadtxt(digits_csv_path(), delimiter=",", dtype=np.float64)  # (1797, 64 + 1)
    pixels = table[:, :64].reshape(-1, 8, 8)  # values 0..16
    labels = table[:, 64].astype(np.int64)
    images = np.rint(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 8, 8) -> (N, 1, 8, 8)
    train, test = stratified_split(labels, TEST_FRACTION, SPLIT_SEED)
    keep = train if split == "train" else test
    return ImageDataset(np.ascontiguousarray(images[keep]), labels[keep], 10, "digits")


def digits_csv_path() -> Path:
    """Locate scikit-learn's ``datasets/data/digits.csv.gz`` without importing scikit-learn.

    Importing ``sklearn.datasets`` costs ~80 MB and ~2 s per process; a federated ClientApp
    starts a fresh process for every message, so bitfed reads the shipped file directly
    (64 pixel columns then the label, comma separated).
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "digits: scikit-learn is not installed; run `make run` or `pip install -e .`"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataError(f"digits: {path} is missing; reinstall scikit-learn")
    return path
