"""Per-client statistics of a federated partition: sizes, label histograms, a stacked-bar PNG."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.atomic import atomic_write
from core.config import PartitionConfig
from core.data.partition import client_split, label_entropy, label_histograms, partition

__all__ = ["PartitionStats", "partition_stats", "format_stats", "save_stats_png"]


@dataclass
class PartitionStats:
    """Sizes and label counts of every client of one partition.

    Attributes
    ----------
    train_sizes, val_sizes
        int64 (K,): each client's local train / validation examples.
    histograms
        int64 (K, num_classes): label counts of each client's whole part (train + val).
    entropy
        float64 (K,): label entropy in bits of each client (see :func:`label_entropy`).
    """

    train_sizes: np.ndarray
    val_sizes: np.ndarray
    histograms: np.ndarray
    entropy: np.ndarray


def partition_stats(
    labels: np.ndarray, num_clients: int, cfg: PartitionConfig, num_classes: int
) -> PartitionStats:
    """Compute :class:`PartitionStats` for ``labels`` split by ``cfg`` into ``num_clients``."""
    kwargs = dict(alpha=cfg.alpha, shards_per_client=cfg.shards_per_client, seed=cfg.seed)
    parts = partition(labels, num_clients, cfg.kind, **kwargs)  # validates before anything else
    splits = [client_split(labels, num_clients, cfg, k) for k in range(num_clients)]
    hist = label_histograms(labels, parts, num_classes)
    return PartitionStats(
        np.array([len(t) for t, _ in splits], dtype=np.int64),
        np.array([len(v) for _, v in splits], dtype=np.int64),
        hist,
        label_entropy(hist),
    )


def format_stats(stats: PartitionStats, title: str) -> str:
    """Render a fixed-width table: one row per client, one column per class, then a summary."""
    k, c = stats.histograms.shape
    width = max(5, len(str(int(stats.histograms.max(initial=0)))) + 1)
    head = "client  train    val  H(bits) |" + "".join(f"{j:>{width}}" for j in range(c))
    lines = [title, head, "-" * len(head)]
    for i in range(k):
        counts = "".join(f"{n:>{width}}" for n in stats.histograms[i])
        lines.append(
            f"{i:>6} {stats.train_sizes[i]:>6} {stats.val_sizes[i]:>6} {stats.entropy[i]:>8.3f} |"
            f"{counts}"
        )
    sizes = stats.train_sizes + stats.val_sizes
    lines.append(
        f"total {int(sizes.sum())} examples; client size min {int(sizes.min())} / median "
        f"{float(np.median(sizes)):g} / max {int(sizes.max())}; mean label entropy "
        f"{stats.entropy.mean():.3f} bits (uniform over {c} classes: {np.log2(c):.3f})"
    )
    return "\n".join(lines)


def save_stats_png(stats: PartitionStats, path: str | Path, title: str) -> Path:
    """Draw each client's label counts as a stacked bar and write the PNG atomically.

    Returns
    -------
    Path
        The written file (temp file in the same folder, fsync, then rename).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    k, c = stats.histograms.shape
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * k + 2), 4.0))
    bottom = np.zeros(k)
    colors = plt.get_cmap("tab10" if c <= 10 else "tab20")
    for j in range(c):
        ax.bar(np.arange(k), stats.histograms[:, j], bottom=bottom, color=colors(j % 20), label=j)
        bottom += stats.histograms[:, j]
    ax.set_xlabel("client")
    ax.set_ylabel("examples")
    ax.set_title(textwrap.fill(title, 60), fontsize=9)
    ax.legend(title="label", fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return path
