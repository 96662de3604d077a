"""``ImageDataset``: a labelled image set held as compact uint8 (the form a device keeps)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ImageDataset"]


@dataclass
class ImageDataset:
    """Images and labels of one split, in memory, uncompressed but never float.

    Scaling to [-1, 1] (``x/255*2-1``, docs/method.md §3) happens per batch in
    :class:`core.data.ImageLoader`, so a client holds 1 byte per pixel instead of 4.

    Attributes
    ----------
    images
        ``np.uint8`` array of shape (N, C, H, W).
    labels
        ``np.int64`` array of shape (N,), values in ``[0, num_classes)``.
    num_classes
        Number of classes of the task (10 for every built-in dataset).
    name
        Dataset name (``"mnist"``, ...), used in messages.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"{self.name}: images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{self.images.shape}"
            )
        if self.labels.dtype != np.int64 or self.labels.shape != (len(self.images),):
            raise ValueError(
                f"{self.name}: labels must be int64 ({len(self.images)},), got "
                f"{self.labels.dtype} {self.labels.shape}"
            )
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= self.num_classes):
            raise ValueError(
                f"{self.name}: labels must lie in [0, {self.num_classes}), got "
                f"[{self.labels.min()}, {self.labels.max()}]"
            )

    def __len__(self) -> int:
        """Return the number of examples N."""
        return len(self.labels)

    @property
    def in_shape(self) -> tuple[int, int, int]:
        """Shape (C, H, W) of one image, what a model's first layer is built for."""
        _, c, h, w = self.images.shape
        return (c, h, w)

    def __repr__(self) -> str:
        """Short summary instead of the arrays."""
        return f"ImageDataset({self.name!r}, n={len(self)}, in_shape={self.in_shape})"
