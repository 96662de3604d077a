"""CIFAR-10 from its "python version" pickle batches (Krizhevsky, 2009).

``cifar-10-python.tar.gz`` unpacks to ``cifar-10-batches-py/`` with ``data_batch_1`` ..
``data_batch_5`` (train, 10,000 images each) and ``test_batch``. Each is a pickled dict with
``b"data"``: uint8 (10000, 3072), one row = 1024 red, 1024 green, 1024 blue values of a 32x32
image in row-major order, and ``b"labels"``: a list of ints 0..9.

Pickles can run code when loaded, so they are read with an unpickler that only admits the numpy
array-rebuilding globals these files contain; anything else is rejected as corrupt.
"""

from __future__ import annotations

import importlib
import io
import pickle
from pathlib import Path

import numpy as np

from core.data.dataset import ImageDataset
from core.data.errors import DataError, missing_files

__all__ = ["CIFAR_FOLDER", "CIFAR_FILES", "load_cifar10", "read_cifar_batch"]

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in a protocol-2 pickle
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):  # noqa: D102 - pickle hook
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed")
        if module.startswith("numpy.core"):  # numpy >= 2 moved numpy.core to numpy._core
            try:
                module = module.replace("numpy.core", "numpy._core", 1)
                importlib.import_module(module)
            except ImportError:
                module = module.replace("numpy._core", "numpy.core", 1)
        return getattr(importlib.import_module(module), name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file.

    Returns
    -------
    tuple of np.ndarray
        Images uint8 (n, 3, 32, 32) and labels int64 (n,).

    Raises
    ------
    DataError
        Unreadable pickle, missing keys, wrong shapes or labels outside 0..9.
    """
    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{path}: truncated or corrupt CIFAR-10 pickle ({exc}); download it again"
        ) from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path}: not a CIFAR-10 batch (no b'data'/b'labels'); download it again")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{path}: wrong size: data is {data.dtype} {data.shape}, expected uint8 (n, 3072)"
        )
    if labels.shape != (len(data),) or (len(labels) and not 0 <= labels.min() <= labels.max() < 10):
        raise DataError(f"{path}: {labels.shape[0]} labels for {len(data)} images or outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels  # (n, 3072) -> (n, C=3, H=32, W=32)


def load_cifar10(root: Path, split: str) -> ImageDataset:
    """Load CIFAR-10 ``split`` from ``root/cifar-10-batches-py/`` (or from ``root`` itself).

    Returns
    -------
    ImageDataset
        Images (N, 3, 32, 32) uint8 (50,000 train / 10,000 test for the real files).
    """
    names = CIFAR_FILES[split]
    folder = root / CIFAR_FOLDER if (root / CIFAR_FOLDER).is_dir() else root
    absent = [n for n in names if not (folder / n).is_file()]
    if absent:
        raise missing_files(
            "cifar10", root, absent, note=f"the unpacked {CIFAR_FOLDER}/ of cifar-10-python.tar.gz"
        )
    parts = [read_cifar_batch(folder / n) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageDataset(images, labels, 10, "cifar10")
