import importlib

import numpy as np
import pytest

from core.config import PartitionConfig
from core.data import DataError, client_split, label_entropy, label_histograms, partition
from core.data.partition import partition_table

partition_module = importlib.import_module("core.data.partition")  # core.data.partition: a function

LABELS = np.repeat(np.arange(10), 100)[np.random.default_rng(0).permutation(1000)]


def check_valid(parts, n, k):
    assert len(parts) == k
    assert all(len(p) > 0 for p in parts)
    assert sum(len(p) for p in parts) == n
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == n and joined.min() == 0 and joined.max() == n - 1
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)


def mean_entropy(parts, labels=LABELS):
    return label_entropy(label_histograms(labels, parts, 10)).mean()


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
@pytest.mark.parametrize("k", [1, 7, 10])
def test_valid_and_deterministic(kind, k):
    parts = partition(LABELS, k, kind, seed=3)
    check_valid(parts, len(LABELS), k)
    again = partition(LABELS, k, kind, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    if k > 1:
        other = partition(LABELS, k, kind, seed=4)
        assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_iid_sizes_and_balance():
    parts = partition(LABELS, 7, "iid")
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert mean_entropy(parts) > 3.2  # log2(10) = 3.32 when perfectly balanced


def test_dirichlet_skew_grows_as_alpha_shrinks():
    entropies = [
        np.mean([mean_entropy(partition(LABELS, 20, "dirichlet", alpha=a, seed=s)) for s in (0, 1)])
        for a in (100.0, 1.0, 0.1, 0.01)
    ]
    assert entropies[0] > 3.0
    assert entropies[0] > entropies[1] > entropies[2] > entropies[3]
    assert entropies[3] < 0.8


def test_dirichlet_tiny_alpha_still_fills_every_client():
    labels = np.arange(50) % 5
    parts = partition(labels, 40, "dirichlet", alpha=1e-3, seed=0)
    check_valid(parts, 50, 40)


def test_shards_are_label_sorted():
    parts = partition(LABELS, 10, "shards", shards_per_client=2)
    assert all(len(p) == 100 for p in parts)
    # 100 examples per class and shards of 50: each shard holds one label
    assert all(len(np.unique(LABELS[p])) <= 2 for p in parts)
    parts1 = partition(LABELS, 10, "shards", shards_per_client=1)
    assert all(len(np.unique(LABELS[p])) == 1 for p in parts1)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(num_clients=0, kind="iid"), r"num_clients must be >= 1, got 0"),
        (dict(num_clients=3, kind="pathological"), r"unknown partition kind 'pathological'"),
        (dict(num_clients=3, kind="dirichlet", alpha=0.0), r"dirichlet alpha must be > 0, got 0.0"),
        (dict(num_clients=3, kind="dirichlet", alpha=-1.0), r"alpha must be > 0, got -1.0"),
        (
            dict(num_clients=3, kind="shards", shards_per_client=0),
            r"shards_per_client must be >= 1",
        ),
        (dict(num_clients=300, kind="shards", shards_per_client=4), r"1200 shards but only 1000"),
    ],
)
def test_bad_input(kwargs, pattern):
    with pytest.raises(DataError, match=pattern):
        partition(LABELS, **kwargs)


def test_labels_must_be_1d_ints():
    with pytest.raises(DataError, match=r"labels must be a 1-D integer array"):
        partition(np.zeros((4, 2), np.int64), 2, "iid")
    with pytest.raises(DataError, match=r"labels must be a 1-D integer array"):
        partition(np.zeros(4), 2, "iid")


@pytest.mark.parametrize("kind", ["iid", "dirichlet", "shards"])
def test_client_split(kind):
    cfg = PartitionConfig(kind=kind, val_fraction=0.1, seed=5)
    parts = partition(LABELS, 6, kind, alpha=cfg.alpha, shards_per_client=2, seed=5)
    for k in range(6):
        train, val = client_split(LABELS, 6, cfg, k)
        assert len(np.intersect1d(train, val)) == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), parts[k])
        assert len(val) == max(1, round(0.1 * len(parts[k])))
        again = client_split(LABELS, 6, cfg, k)
        assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])


def test_client_split_edges():
    no_val = client_split(LABELS, 4, PartitionConfig(val_fraction=0.0), 2)
    assert len(no_val[1]) == 0 and len(no_val[0]) == 250
    tiny = client_split(np.arange(3), 3, PartitionConfig(val_fraction=0.5), 0)
    assert len(tiny[0]) == 1 and len(tiny[1]) == 0  # a single example stays for training
    with pytest.raises(DataError, match=r"partition_id 4 outside 0..3"):
        client_split(LABELS, 4, PartitionConfig(), 4)


def test_label_entropy_formula():
    hist = np.array([[5, 5, 0, 0], [10, 0, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_allclose(label_entropy(hist), [1.0, 0.0, 2.0])


def check_cover(parts, n):
    joined = np.concatenate(parts)
    assert len(joined) == n and np.array_equal(np.sort(joined), np.arange(n))
    assert all(p.dtype == np.int64 and np.all(np.diff(p) > 0) for p in parts)


def test_iid_more_clients_than_examples_leaves_the_rest_empty():
    parts = partition(LABELS, 2500, "iid", seed=1)
    check_cover(parts, 1000)
    sizes = np.array([len(p) for p in parts])
    assert np.array_equal(sizes, np.r_[np.ones(1000, int), np.zeros(1500, int)])
    train, val = client_split(LABELS, 2500, PartitionConfig(seed=1), 2000)
    assert len(train) == 0 and len(val) == 0 and train.dtype == np.int64
    train, val = client_split(LABELS, 2500, PartitionConfig(seed=1), 7)
    assert np.array_equal(train, parts[7]) and len(val) == 0  # one example stays for training


def test_dirichlet_more_clients_than_examples_is_one_skewed_draw():
    parts = partition(LABELS, 3000, "dirichlet", alpha=0.5, seed=2)
    check_cover(parts, 1000)
    sizes = np.array([len(p) for p in parts])
    assert (sizes == 0).sum() >= 2000 and sizes.max() >= 2
    again = partition(LABELS, 3000, "dirichlet", alpha=0.5, seed=2)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(LABELS, 3000, "dirichlet", alpha=0.5, seed=3)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


def test_shards_need_as_many_examples_as_shards():
    with pytest.raises(DataError, match=r"2000 clients x 2 shards = 4000 shards but only 1000"):
        partition(LABELS, 2000, "shards")


def test_client_split_partitions_once_per_process(monkeypatch):
    """100,000 clients over 60,000 examples: the partition is computed once, then sliced."""
    labels = np.random.default_rng(0).integers(0, 10, 60_000).astype(np.uint8)
    labels.flags.writeable = False  # as core.data's cached datasets hold them
    calls = []
    compute = partition_module._compute
    monkeypatch.setattr(
        partition_module, "_compute", lambda *a: calls.append(a[1:3]) or compute(*a)
    )
    cfg = PartitionConfig(kind="iid", seed=11)
    sizes = [
        len(np.concatenate(client_split(labels, 100_000, cfg, k))) for k in range(0, 100_000, 97)
    ]
    assert calls == [(100_000, "iid")]
    assert set(sizes) == {0, 1} and sizes[0] == 1
    table = partition_table(labels, 100_000, "iid", seed=11)
    assert table.order.nbytes == 8 * 60_000 and table.bounds.nbytes == 8 * 100_001
    assert not table.order.flags.writeable
    client_split(labels.copy(), 100_000, cfg, 5)  # equal labels, another object: hashed, found
    client_split(labels, 100_000, PartitionConfig(kind="iid", seed=12), 5)  # another partition
    assert calls == [(100_000, "iid"), (100_000, "iid")]


def test_table_matches_the_parts():
    table = partition_table(LABELS, 7, "dirichlet", alpha=0.3, seed=4)
    parts = partition(LABELS, 7, "dirichlet", alpha=0.3, seed=4)
    assert np.array_equal(table.sizes(), [len(p) for p in parts])
    assert all(np.array_equal(table.part(k), parts[k]) for k in range(7))
