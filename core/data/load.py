"""``load_dataset``: one entry point for every supported dataset and split."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from core.config import DATASETS
from core.data.cifar import load_cifar10
from core.data.dataset import ImageDataset
from core.data.digits import load_digits
from core.data.errors import DataError
from core.data.idx import load_idx_dataset
from core.data.svhn import load_svhn

__all__ = ["DATASET_NAMES", "SPLITS", "load_dataset"]

DATASET_NAMES = DATASETS  # digits, mnist, fashion-mnist, cifar10, svhn (one list, in config)
SPLITS = ("train", "test")


def load_dataset(
    name: str, root: str | Path | None, split: str, *, svhn_extra: bool = False
) -> ImageDataset:
    """Load one split of a dataset from its standard on-disk files.

    Parameters
    ----------
    name
        ``digits`` (scikit-learn's bundled 8x8 digits, needs no root), ``mnist``,
        ``fashion-mnist`` (IDX, raw or .gz), ``cifar10`` (python pickle batches) or ``svhn``
        (``.mat`` files).
    root
        Folder holding the files (see the README's "Data" section); ignored for ``digits``.
    split
        ``"train"`` or ``"test"``.
    svhn_extra
        SVHN only: append ``extra_32x32.mat`` to the train split (the paper's 604,388 images).

    Returns
    -------
    ImageDataset
        uint8 images (N, C, H, W) and int64 labels. Repeated calls with unchanged files return the
        same read-only arrays from a small cache (a simulation loads a dataset once per process).

    Raises
    ------
    DataError
        Unknown name or split, no root, missing folder/files, truncated or corrupt files.
    """
    if name not in DATASET_NAMES:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if split not in SPLITS:
        raise DataError(f"{name}: unknown split {split!r}; use train or test")
    if name == "digits":
        return _cached(name, "", split, False, ())
    if root is None or str(root) == "":
        raise DataError(
            f"{name}: no root folder given; set dataset.root=DIR (fetch the files with "
            f"`bitfed-data download {name} --root DIR`)"
        )
    folder = Path(root).expanduser().resolve()
    return _cached(name, str(folder), split, svhn_extra and name == "svhn", _stamp(folder))


def _stamp(folder: Path) -> tuple[tuple[str, int, int], ...]:
    """Names, sizes and mtimes of the folder's files: the cache key changes when a file does."""
    if not folder.is_dir():
        return ()
    found = []
    for path in sorted(
        [*folder.glob("*"), *folder.glob("*/*")]
    ):  # CIFAR's files are one level down
        if path.is_file():
            st = path.stat()
            found.append((str(path.relative_to(folder)), st.st_size, st.st_mtime_ns))
    return tuple(found)


@lru_cache(maxsize=4)
def _cached(name: str, root: str, split: str, extra: bool, _stamp: tuple) -> ImageDataset:
    folder = Path(root)
    if name == "digits":
        data = load_digits(split)
    elif name in ("mnist", "fashion-mnist"):
        data = load_idx_dataset(name, folder, split)
    elif name == "cifar10":
        data = load_cifar10(folder, split)
    else:
        data = load_svhn(folder, split, extra=extra)
    data.images.flags.writeable = False  # shared between callers: nobody may edit in place
    data.labels.flags.writeable = False
    return data
