"""SVHN (Street View House Numbers, Netzer et al. 2011), cropped-digit format 2 ``.mat`` files.

``train_32x32.mat`` (73,257), ``test_32x32.mat`` (26,032) and the optional ``extra_32x32.mat``
(531,131) each hold ``X``: uint8 (32, 32, 3, N) and ``y``: (N, 1) with labels 1..10, where 10
stands for the digit 0. The paper trains on train + extra (604,388 images, docs/method.md §3).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.dataset import ImageDataset
from core.data.errors import DataError, missing_files

__all__ = ["SVHN_FILES", "SVHN_EXTRA", "read_svhn_mat", "load_svhn"]

SVHN_FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat"}
SVHN_EXTRA = "extra_32x32.mat"


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one SVHN ``.mat`` file.

    Returns
    -------
    tuple of np.ndarray
        Images uint8 (N, 3, 32, 32) and labels int64 (N,) in 0..9 (the file's 10 becomes 0).
    """
    from scipy.io import loadmat

    try:
        mat = loadmat(path, variable_names=("X", "y"))
    except Exception as exc:  # scipy raises IndexError, ValueError, KeyError... on bad bytes
        raise DataError(
            f"{path}: truncated or corrupt .mat file ({exc}); download it again"
        ) from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path}: no X/y variables; not an SVHN 32x32 file, download it again")
    x, y = mat["X"], np.asarray(mat["y"]).reshape(-1)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise DataError(
            f"{path}: wrong size: X is {x.dtype} {x.shape} for {len(y)} labels, expected uint8 "
            "(32, 32, 3, N)"
        )
    if len(y) and not 1 <= y.min() <= y.max() <= 10:
        raise DataError(f"{path}: labels outside 1..10; the file is corrupt")
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # (H, W, C, N) -> (N, C, H, W)
    return images, (y.astype(np.int64) % 10)  # label 10 means digit 0


def load_svhn(root: Path, split: str, *, extra: bool = False) -> ImageDataset:
    """Load SVHN ``split`` from ``root``; with ``extra`` the train split also gets extra_32x32.

    Returns
    -------
    ImageDataset
        Images (N, 3, 32, 32) uint8, labels int64 in [0, 10).
    """
    names = [SVHN_FILES[split]] + ([SVHN_EXTRA] if extra and split == "train" else [])
    absent = [n for n in names if not (root / n).is_file()]
    if absent:
        raise missing_files("svhn", root, absent, flags="--svhn-extra" if extra else "")
    parts = [read_svhn_mat(root / n) for n in names]
    images = parts[0][0] if len(parts) == 1 else np.concatenate([p[0] for p in parts])
    labels = parts[0][1] if len(parts) == 1 else np.concatenate([p[1] for p in parts])
    return ImageDataset(images, labels, 10, "svhn")
