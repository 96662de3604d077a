"""Datasets, mini-batch loading, download and federated partitions (no Flower here).

Images stay uint8 in memory and are scaled to [-1, 1] per batch (docs/method.md §3). The embedded
default ``digits`` ships with scikit-learn, so a run works offline with no data folder.
"""

from core.data.dataset import ImageDataset
from core.data.download import BASE_URLS, SOURCES, download
from core.data.errors import DataError
from core.data.load import DATASET_NAMES, load_dataset
from core.data.loader import ImageLoader, flip_for
from core.data.partition import (
    PARTITION_KINDS,
    client_split,
    label_entropy,
    label_histograms,
    partition,
)

__all__ = [
    # datasets
    "DATASET_NAMES",
    "ImageDataset",
    "load_dataset",
    # batches
    "ImageLoader",
    "flip_for",
    # federated partitions
    "PARTITION_KINDS",
    "partition",
    "client_split",
    "label_histograms",
    "label_entropy",
    # download
    "SOURCES",
    "BASE_URLS",
    "download",
    # errors
    "DataError",
]
