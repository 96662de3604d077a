"""MNIST and Fashion-MNIST from their IDX files, raw or gzip-compressed.

IDX layout (LeCun et al., http://yann.lecun.com/exdb/mnist/): a 4-byte magic ``00 00 TT DD``
(TT = element type, 0x08 = unsigned byte; DD = number of dimensions), then DD big-endian uint32
sizes, then the elements in row-major order. Images are ``00 00 08 03`` (N, 28, 28), labels are
``00 00 08 01`` (N,). A file of any other length than header + prod(sizes) is truncated or corrupt.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from core.data.dataset import ImageDataset
from core.data.errors import DataError, missing_files

__all__ = ["IDX_FILES", "read_idx", "write_idx", "load_idx_dataset"]

# split -> (images file, labels file); identical names for MNIST and Fashion-MNIST
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08


def _read_bytes(path: Path) -> bytes:
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(
            f"{path}: truncated or corrupt gzip ({exc}); delete it and download it again"
        ) from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read one unsigned-byte IDX file (raw, or gzip when the name ends in ``.gz``).

    Parameters
    ----------
    path
        The file.
    ndim
        Expected number of dimensions (3 for images, 1 for labels).

    Returns
    -------
    np.ndarray
        ``np.uint8`` array with the sizes from the header.

    Raises
    ------
    DataError
        Bad magic, wrong dimension count, or a length that does not match the header.
    """
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: bad magic {data[:4].hex() or '(empty)'}; not an IDX file")
    if data[2] != _UBYTE or data[3] != ndim:
        raise DataError(
            f"{path}: bad magic {data[:4].hex()}; expected 000008{ndim:02x} "
            f"(unsigned bytes, {ndim} dimension(s))"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header ({len(data)} bytes, need {header})")
    sizes = tuple(int(s) for s in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(sizes, dtype=np.int64))
    if len(data) != expected:
        raise DataError(
            f"{path}: wrong size: {len(data)} bytes, header {sizes} says {expected}; the file is "
            "truncated or corrupt, download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(sizes)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzip-compressed when ``path`` ends in ``.gz``.

    The inverse of :func:`read_idx`; used by tests and by anyone exporting data in this format.
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, _UBYTE, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.tobytes()
    Path(path).write_bytes(gzip.compress(payload) if str(path).endswith(".gz") else payload)


def _find(root: Path, stem: str) -> Path | None:
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_idx_dataset(name: str, root: Path, split: str) -> ImageDataset:
    """Load MNIST-format images and labels of ``split`` from ``root``.

    Looks for ``<stem>`` then ``<stem>.gz`` for each of :data:`IDX_FILES` ``[split]``.

    Returns
    -------
    ImageDataset
        Images (N, 1, 28, 28) uint8, labels int64 in [0, 10).
    """
    stems = IDX_FILES[split]
    paths = [_find(root, stem) for stem in stems]
    if any(p is None for p in paths):
        absent = [f"{s}[.gz]" for s, p in zip(stems, paths) if p is None]
        raise missing_files(name, root, absent, note="IDX, raw or .gz")
    images_path, labels_path = paths
    images = read_idx(images_path, 3)  # (N, H, W)
    labels = read_idx(labels_path, 1)  # (N,)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path}: {len(images)} images but {labels_path.name} has {len(labels)} "
            "labels; the pair does not belong together, download both again"
        )
    if len(labels) and labels.max() > 9:
        raise DataError(f"{labels_path}: label {labels.max()} outside 0..9; the file is corrupt")
    return ImageDataset(images[:, None].copy(), labels.astype(np.int64), 10, name)  # (N,1,H,W)
