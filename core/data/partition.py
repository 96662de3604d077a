"""Federated partitions of a labelled dataset: iid, Dirichlet label skew, label-sorted shards.

Every partitioner is deterministic for its ``seed``, gives every client at least one example,
never puts an example in two clients, and its part sizes sum to N. Each client's indices are
returned sorted ascending.
"""

from __future__ import annotations

import numpy as np

from core.config import PARTITIONS, PartitionConfig
from core.data.errors import DataError

__all__ = ["PARTITION_KINDS", "partition", "client_split", "label_histograms", "label_entropy"]

PARTITION_KINDS = PARTITIONS  # iid, dirichlet, shards (one list, in config)
_DIRICHLET_TRIES = 100  # redraws before empty clients are topped up from the largest one


def partition(
    labels: np.ndarray,
    num_clients: int,
    kind: str,
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    seed: int = 0,
) -> list[np.ndarray]:
    """Split example indices ``0..N-1`` among ``num_clients`` clients.

    Parameters
    ----------
    labels
        int labels of shape (N,).
    num_clients
        Number of parts K, ``1 <= K <= N``.
    kind
        ``iid``: a seeded permutation cut into K parts whose sizes differ by at most one.
        ``dirichlet``: label skew of Hsu et al. (arXiv 1909.06335): for each class c,
        ``p_c ~ Dir(alpha · 1_K)`` and the class's examples are dealt to clients in proportions
        ``p_c``; smaller ``alpha`` means more skew. If a client ends up empty the draw is repeated
        (up to 100 times), then the largest client gives one example to each empty one.
        ``shards``: McMahan et al. (arXiv 1602.05629): sort by label, cut into
        ``K · shards_per_client`` equal shards, give each client ``shards_per_client`` random ones.
    alpha
        Dirichlet concentration (> 0).
    shards_per_client
        Shards per client (>= 1); needs ``N >= K · shards_per_client``.
    seed
        Seed of every random choice.

    Returns
    -------
    list of np.ndarray
        K sorted int64 index arrays, disjoint, non-empty, covering ``0..N-1``.

    Raises
    ------
    DataError
        Unknown kind, K < 1 or K > N, ``alpha <= 0``, ``shards_per_client < 1`` or too few examples
        for the shards.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    n = len(labels)
    if kind not in PARTITION_KINDS:
        raise DataError(
            f"unknown partition kind {kind!r}; choose one of {', '.join(PARTITION_KINDS)}"
        )
    if num_clients < 1:
        raise DataError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > n:
        raise DataError(
            f"{num_clients} clients but only {n} examples: every client needs at least one; "
            f"use at most {n} clients or a larger dataset"
        )
    rng = np.random.default_rng(seed)
    if kind == "iid":
        parts = np.array_split(rng.permutation(n), num_clients)
    elif kind == "dirichlet":
        if not alpha > 0:
            raise DataError(f"dirichlet alpha must be > 0, got {alpha} (smaller = more label skew)")
        parts = _dirichlet(labels, num_clients, alpha, rng)
    else:
        parts = _shards(labels, num_clients, shards_per_client, rng)
    return [np.sort(p).astype(np.int64) for p in parts]


def _dirichlet(
    labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    for _ in range(_DIRICHLET_TRIES):
        parts: list[list[np.ndarray]] = [[] for _ in range(k)]
        for idx in by_class:
            p = rng.dirichlet(np.full(k, alpha))  # (K,) share of this class per client
            cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        merged = [np.concatenate(p) for p in parts]
        if min(len(p) for p in merged) > 0:
            return merged
    for client in range(k):  # still empty after the redraws: top up from the largest client
        if len(merged[client]) == 0:
            donor = int(np.argmax([len(p) for p in merged]))
            merged[client], merged[donor] = merged[donor][-1:], merged[donor][:-1]
    return merged


def _shards(
    labels: np.ndarray, k: int, per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    if per_client < 1:
        raise DataError(f"shards_per_client must be >= 1, got {per_client}")
    num_shards = k * per_client
    if num_shards > len(labels):
        raise DataError(
            f"shards: {k} clients x {per_client} shards = {num_shards} shards but only "
            f"{len(labels)} examples; lower shards_per_client or the number of clients"
        )
    shuffled = rng.permutation(len(labels))  # random order inside each class
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(by_label, num_shards)
    owner = rng.permutation(num_shards).reshape(k, per_client)  # (K, shards_per_client)
    return [np.concatenate([shards[s] for s in row]) for row in owner]


def client_split(
    labels: np.ndarray, num_clients: int, cfg: PartitionConfig, partition_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return the indices of one client's local train and validation examples.

    The client's part comes from :func:`partition` with ``cfg``'s kind, alpha, shards and seed;
    a permutation seeded by ``(cfg.seed, partition_id)`` then puts
    ``max(1, round(cfg.val_fraction · n))`` of its n examples in validation (none when
    ``val_fraction`` is 0; always at least one left for training).

    Returns
    -------
    tuple of np.ndarray
        (train indices, validation indices), sorted, disjoint, into ``labels``.
    """
    if not 0 <= partition_id < num_clients:
        raise DataError(f"partition_id {partition_id} outside 0..{num_clients - 1}")
    own = partition(
        labels,
        num_clients,
        cfg.kind,
        alpha=cfg.alpha,
        shards_per_client=cfg.shards_per_client,
        seed=cfg.seed,
    )[partition_id]
    n = len(own)
    n_val = 0 if cfg.val_fraction == 0 or n < 2 else max(1, int(round(cfg.val_fraction * n)))
    n_val = min(n_val, n - 1)
    order = np.random.default_rng([cfg.seed, partition_id, 1]).permutation(own)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def label_histograms(labels: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-client label counts, int64 (K, num_classes)."""
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])


def label_entropy(histograms: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits of each client's label distribution, shape (K,).

    ``H_k = -Σ_c q_kc log2 q_kc`` with ``q_kc = n_kc / n_k``: log2(10) ≈ 3.32 for balanced
    10-class data, 0 for a single-label client. A lower mean means more label skew.
    """
    q = histograms / np.maximum(histograms.sum(axis=1, keepdims=True), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log2(q), 0.0)
    return -terms.sum(axis=1)
