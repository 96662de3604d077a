"""Federated partitions of a labelled dataset: iid, Dirichlet label skew, label-sorted shards.

Every partitioner is deterministic for its ``seed``, never puts an example in two clients, and
its part sizes sum to N. With at most as many clients as examples (K <= N) every client gets at
least one example; a population larger than the dataset (K > N, e.g. 100,000 simulated clients
over MNIST's 60,000 examples) is allowed for ``iid`` and ``dirichlet`` and leaves some clients
empty (a sampled empty client answers without an update). Each client's indices are returned
sorted ascending.

A partition is computed once per process for each (labels, K, kind, alpha, shards, seed) and
kept as a table (all indices grouped by client, and K + 1 offsets): :func:`client_split`, which
every simulated client calls with the whole population's K, then costs one slice, not a new
partition of N examples into K parts.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from core.config import PARTITIONS, PartitionConfig
from core.data.errors import DataError

__all__ = [
    "PARTITION_KINDS",
    "PartitionTable",
    "partition",
    "partition_table",
    "client_split",
    "label_histograms",
    "label_entropy",
]

PARTITION_KINDS = PARTITIONS  # iid, dirichlet, shards (one list, in config)
_DIRICHLET_TRIES = 100  # redraws before empty clients are topped up from the largest one
_CACHED_TABLES = 4  # partition tables kept per process (one per run in practice)


@dataclass(frozen=True)
class PartitionTable:
    """A partition of ``0..N-1`` into K parts: client k holds ``order[bounds[k]:bounds[k+1]]``.

    ``order``: int64 (N,), the indices grouped by client, ascending within a client;
    ``bounds``: int64 (K + 1,), offsets into ``order`` (``bounds[0] = 0``, ``bounds[K] = N``).
    Memory is ``8 (N + K + 1)`` bytes, whatever the population.
    """

    order: np.ndarray
    bounds: np.ndarray

    @property
    def num_clients(self) -> int:
        """Number of parts K."""
        return len(self.bounds) - 1

    def part(self, k: int) -> np.ndarray:
        """Sorted indices of client ``k`` (a read-only view; empty when it holds nothing)."""
        return self.order[self.bounds[k] : self.bounds[k + 1]]

    def sizes(self) -> np.ndarray:
        """int64 (K,): examples of each client."""
        return np.diff(self.bounds)


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
        Number of parts K >= 1. ``K > N`` (more clients than examples) is allowed for ``iid`` and
        ``dirichlet``; some parts are then empty.
    kind
        ``iid``: a seeded permutation cut into K parts whose sizes differ by at most one (K > N:
        the first N parts hold one example each).
        ``dirichlet``: label skew of Hsu et al. (arXiv 1909.06335): for each class c,
        ``p_c ~ Dir(alpha · 1_K)`` and the class's examples are dealt to clients in proportions
        ``p_c``; smaller ``alpha`` means more skew. If a client ends up empty the draw is repeated
        (up to 100 times), then the largest client gives one example to each empty one (K <= N
        only; with K > N one draw is kept as it is).
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
        K sorted int64 index arrays, disjoint, covering ``0..N-1``; non-empty when ``K <= N``.

    Raises
    ------
    DataError
        Unknown kind, K < 1, ``alpha <= 0``, ``shards_per_client < 1`` or too few examples for
        the shards.
    """
    table = partition_table(
        labels, num_clients, kind, alpha=alpha, shards_per_client=shards_per_client, seed=seed
    )
    return [table.part(k).copy() for k in range(table.num_clients)]


_tables: OrderedDict[tuple, PartitionTable] = OrderedDict()
_seen: deque[tuple[np.ndarray, tuple]] = deque(maxlen=_CACHED_TABLES)  # (labels object, key)
_tables_lock = threading.Lock()


def partition_table(
    labels: np.ndarray,
    num_clients: int,
    kind: str,
    *,
    alpha: float = 0.5,
    shards_per_client: int = 2,
    seed: int = 0,
) -> PartitionTable:
    """Return the :func:`partition` of ``labels`` as a :class:`PartitionTable` (cached).

    The cache key is a digest of ``labels`` and every argument (a read-only ``labels`` array seen
    before is recognised by identity, without hashing); the last 4 tables are kept. The table's
    arrays are read-only: every caller shares them.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
    if kind not in PARTITION_KINDS:
        raise DataError(
            f"unknown partition kind {kind!r}; choose one of {', '.join(PARTITION_KINDS)}"
        )
    if num_clients < 1:
        raise DataError(f"num_clients must be >= 1, got {num_clients}")
    args = (num_clients, kind, seed)
    args += (float(alpha),) if kind == "dirichlet" else ()
    args += (int(shards_per_client),) if kind == "shards" else ()
    with _tables_lock:  # the same labels object again (a cached dataset): no hashing
        for held, key in _seen:
            if held is labels and key[2:] == args and key in _tables:
                return _tables[key]
    digest = hashlib.blake2b(np.ascontiguousarray(labels).tobytes(), digest_size=16).hexdigest()
    key = (digest, len(labels), *args)
    with _tables_lock:
        table = _tables.get(key)
    if table is None:
        table = _compute(labels, num_clients, kind, alpha, shards_per_client, seed)
        table.order.flags.writeable = False
        table.bounds.flags.writeable = False
    with _tables_lock:
        _tables[key] = table
        _tables.move_to_end(key)
        while len(_tables) > _CACHED_TABLES:
            _tables.popitem(last=False)
        if not labels.flags.writeable:  # read-only labels cannot change under the same object
            _seen.append((labels, key))
    return table


def _compute(labels, k, kind, alpha, shards_per_client, seed) -> PartitionTable:
    n = len(labels)
    rng = np.random.default_rng(seed)
    if kind == "iid":
        sizes = np.full(k, n // k, dtype=np.int64)
        sizes[: n % k] += 1  # np.array_split's sizes
        return _grouped(rng.permutation(n), sizes)
    if kind == "dirichlet":
        if not alpha > 0:
            raise DataError(f"dirichlet alpha must be > 0, got {alpha} (smaller = more label skew)")
        if k > n:
            return _dirichlet_sparse(labels, k, alpha, rng)
        return _from_parts(_dirichlet(labels, k, alpha, rng))
    return _from_parts(_shards(labels, k, shards_per_client, rng))


def _grouped(indices: np.ndarray, sizes: np.ndarray) -> PartitionTable:
    """Table of consecutive runs of ``indices`` of lengths ``sizes``, each run sorted."""
    owner = np.repeat(np.arange(len(sizes)), sizes)
    order = indices[np.lexsort((indices, owner))].astype(np.int64)
    return PartitionTable(order, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))


def _from_parts(parts: list[np.ndarray]) -> PartitionTable:
    sizes = np.array([len(p) for p in parts], dtype=np.int64)
    order = np.concatenate([np.sort(p) for p in parts]).astype(np.int64)
    return PartitionTable(order, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))


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


def _dirichlet_sparse(
    labels: np.ndarray, k: int, alpha: float, rng: np.random.Generator
) -> PartitionTable:
    """One Dirichlet draw per class for K > N clients, vectorized (no per-client Python loop)."""
    owner = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        p = rng.dirichlet(np.full(k, alpha))
        cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        owner[idx] = np.searchsorted(cuts, np.arange(len(idx)), side="right")  # = np.split's
    order = np.lexsort((np.arange(len(labels)), owner)).astype(np.int64)
    sizes = np.bincount(owner, minlength=k)
    return PartitionTable(order, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))


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

    The client's part comes from :func:`partition_table` (cached: one slice per call) with
    ``cfg``'s kind, alpha, shards and seed; a permutation seeded by ``(cfg.seed, partition_id)``
    then puts ``max(1, round(cfg.val_fraction · n))`` of its n examples in validation (none when
    ``val_fraction`` is 0; always at least one left for training). A client of an empty part
    (K > N) gets two empty arrays.

    Returns
    -------
    tuple of np.ndarray
        (train indices, validation indices), sorted, disjoint, into ``labels``.
    """
    if not 0 <= partition_id < num_clients:
        raise DataError(f"partition_id {partition_id} outside 0..{num_clients - 1}")
    own = partition_table(
        labels,
        num_clients,
        cfg.kind,
        alpha=cfg.alpha,
        shards_per_client=cfg.shards_per_client,
        seed=cfg.seed,
    ).part(partition_id)
    n = len(own)
    n_val = 0 if cfg.val_fraction == 0 or n < 2 else max(1, int(round(cfg.val_fraction * n)))
    n_val = min(n_val, n - 1) if n else 0
    order = np.random.default_rng([cfg.seed, partition_id, 1]).permutation(np.array(own))
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
    return 0.0 - terms.sum(axis=1)  # 0.0 - x: no "-0.000" for an empty or one-label client
