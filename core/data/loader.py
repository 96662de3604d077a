"""``ImageLoader``: seeded, re-iterable mini-batches of [-1, 1] float tensors from uint8 images."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from core.data.dataset import ImageDataset
from core.data.errors import DataError

__all__ = ["ImageLoader", "SHIFT_FRACTION", "scale_to_unit", "shift_flip", "flip_for"]

SHIFT_FRACTION = (
    0.15  # Keras width/height_shift_range of the paper's CIFAR/SVHN runs (docs/method.md §3)
)


def flip_for(name: str) -> bool:
    """Return whether horizontal flips are a valid augmentation for dataset ``name``.

    Only CIFAR-10 (docs/method.md §3); mirrored digits (MNIST, digits, SVHN) and clothes with text
    are different images.

    >>> flip_for("cifar10"), flip_for("svhn")
    (True, False)
    """
    return name == "cifar10"


def scale_to_unit(images: np.ndarray) -> torch.Tensor:
    """Map uint8 pixels to float32 in [-1, 1]: ``x / 255 * 2 - 1`` (docs/method.md §3).

    >>> scale_to_unit(np.array([0, 255], dtype=np.uint8)).tolist()
    [-1.0, 1.0]
    """
    return torch.from_numpy(np.ascontiguousarray(images)).float().div_(127.5).sub_(1.0)


def shift_flip(
    images: np.ndarray, rng: np.random.Generator, *, fraction: float = SHIFT_FRACTION, flip: bool
) -> np.ndarray:
    """Randomly translate each image (and mirror it horizontally with probability 1/2 if ``flip``).

    Each image gets integer shifts ``dy ~ U{-s_h..s_h}``, ``dx ~ U{-s_w..s_w}`` with
    ``s = round(fraction * size)``; output pixel ``(i, j)`` takes input pixel
    ``(clip(i - dy), clip(j - dx))``, i.e. borders are filled with the nearest edge pixel
    (Keras ``ImageDataGenerator`` fill_mode="nearest", as in the paper's training code).

    Parameters
    ----------
    images
        uint8 (B, C, H, W).
    rng
        Source of the shifts and flips (the loader passes its per-epoch generator).
    fraction
        Maximum shift as a fraction of height/width.
    flip
        Also mirror left-right with probability 1/2 (CIFAR-10; not SVHN, whose digits are not
        mirror-symmetric).

    Returns
    -------
    np.ndarray
        uint8 (B, C, H, W), a new array.
    """
    b, _, h, w = images.shape
    sh, sw = int(round(fraction * h)), int(round(fraction * w))
    dy = rng.integers(-sh, sh + 1, size=b)
    dx = rng.integers(-sw, sw + 1, size=b)
    rows = np.clip(np.arange(h)[None, :] - dy[:, None], 0, h - 1)  # (B, H)
    cols = np.clip(np.arange(w)[None, :] - dx[:, None], 0, w - 1)  # (B, W)
    if flip:
        mirrored = rng.random(b) < 0.5
        cols = np.where(mirrored[:, None], cols[:, ::-1], cols)  # (B, W)
    # advanced indices (B,1,1), (B,H,1), (B,1,W) around a slice -> (B, H, W, C)
    out = images[np.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))  # (B, H, W, C) -> (B, C, H, W)


class ImageLoader:
    """Mini-batches over (a subset of) an :class:`ImageDataset`; each iteration is a new epoch.

    Epoch ``e`` (counting from 0, one per ``iter()``) draws its order and augmentation from
    ``np.random.default_rng([seed, e])``, so a run is reproducible and every epoch differs.

    Parameters
    ----------
    dataset
        The images and labels.
    indices
        Which examples to use (a client's partition); ``None`` = all.
    batch_size
        Examples per batch (the paper uses 100, docs/method.md §2f).
    shuffle
        New random order each epoch; otherwise ``indices`` order.
    seed
        Seed of the order and augmentation.
    augment
        Random shift up to :data:`SHIFT_FRACTION` of height/width (+ flip when ``flip``).
    flip
        Horizontal flips as part of ``augment`` (False for SVHN).
    drop_last
        Skip a final partial batch (l1 batch norm divides by a fixed N, docs/method.md §9.3).
    raw
        Yield the uint8 pixel codes ``k`` themselves instead of float32 ``k / 127.5 - 1``: a
        quarter of the bytes. Models built with a low-cost recipe take them as they are (their
        first layer keeps the codes as its saved input, issue 3); ``standard`` models scale them.

    Attributes
    ----------
    num_examples
        Number of examples the loader draws from (the client's weight in FedAvg).

    Yields
    ------
    tuple of torch.Tensor
        ``x`` float32 (B, C, H, W) in [-1, 1] (``raw``: uint8 codes in [0, 255]) and ``y``
        int64 (B,).
    """

    def __init__(
        self,
        dataset: ImageDataset,
        indices: np.ndarray | None = None,
        batch_size: int = 100,
        shuffle: bool = True,
        seed: int = 0,
        augment: bool = False,
        flip: bool = False,
        drop_last: bool = False,
        raw: bool = False,
    ) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        idx = np.arange(len(dataset)) if indices is None else np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or (len(idx) and (idx.min() < 0 or idx.max() >= len(dataset))):
            raise DataError(
                f"{dataset.name}: indices must be a 1-D array within [0, {len(dataset)}), got "
                f"shape {idx.shape}" + (f" range [{idx.min()}, {idx.max()}]" if len(idx) else "")
            )
        self.dataset = dataset
        self.indices = idx
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment
        self.flip = flip
        self.drop_last = drop_last
        self.raw = raw
        self.num_examples = len(idx)
        self.epoch = 0  # the next iteration's epoch number

    def __len__(self) -> int:
        """Return the number of batches per epoch."""
        full, rest = divmod(self.num_examples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Start a new epoch and yield its batches."""
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        order = rng.permutation(self.indices) if self.shuffle else self.indices
        for b in range(len(self)):
            pick = order[b * self.batch_size : (b + 1) * self.batch_size]
            images = self.dataset.images[pick]  # (B, C, H, W) uint8
            if self.augment:
                images = shift_flip(images, rng, flip=self.flip)
            x = (
                torch.from_numpy(np.ascontiguousarray(images))
                if self.raw
                else scale_to_unit(images)
            )
            yield x, torch.from_numpy(self.dataset.labels[pick])

    def __repr__(self) -> str:
        """Name, size and settings."""
        return (
            f"ImageLoader({self.dataset.name}, n={self.num_examples}, batch_size={self.batch_size}"
            f", batches={len(self)}, augment={self.augment}" + (", raw=True)" if self.raw else ")")
        )
