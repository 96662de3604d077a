"""Compact client state (issue 17): version + float16 residual on disk, replicas rebuilt exactly."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from client.client_app import app
from client.state import ClientState, state_path
from core import codec, federated
from core.codec import ModelSpec, TensorSpec, decode_full, encode_full, encode_update, model_spec
from core.config import ExperimentConfig, from_run_config
from core.experiment import build_model_for
from core.replica_store import SNAPSHOT_EVERY, ReplicaStore
from glue.records import record_to_state, state_to_record
from server.strategies import build_strategy

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def mnist_mlp_spec() -> ModelSpec:
    return model_spec(build_model_for(ExperimentConfig(), (1, 28, 28), 10))


def residual_like(spec, seed=0):
    rng = np.random.default_rng(seed)
    return {t.name: (rng.standard_normal(t.shape) * 1e-3).astype(np.float32) for t in spec.sign}


def test_compact_file_of_the_mnist_mlp_is_under_1_mb_and_round_trips(tmp_path):
    spec = mnist_mlp_spec()
    residual = residual_like(spec)
    replica = {t.name: np.zeros(t.shape, np.float32) for t in spec.tensors}
    state = ClientState("lin", 7, replica, residual, origin=3)
    state.save(tmp_path / "full.npz")
    state.save(tmp_path / "compact.npz", compact=True)
    assert (tmp_path / "full.npz").stat().st_size > 3_000_000  # float32 replica + residual
    assert (tmp_path / "compact.npz").stat().st_size <= 1_000_000
    back = ClientState.load(tmp_path / "compact.npz", "lin")
    assert (back.version, back.origin, back.replica) == (7, 3, {})
    for name, r in residual.items():
        bound = np.abs(r).max() * 2.0**-11  # float16 of r / max|r|: half an ulp at 1
        assert back.residual[name].dtype == np.float32
        assert np.max(np.abs(back.residual[name] - r)) <= bound
        assert np.max(np.abs(back.residual[name] - r)) > 0  # it is float16, not a copy
    assert ClientState.load(tmp_path / "compact.npz", "other") is None


def test_malformed_compact_residual_is_unreadable(tmp_path):
    spec = ModelSpec((TensorSpec("w", (3,), "sign"),))
    path = tmp_path / "c.npz"
    ClientState("lin", 1, {}, {"w": np.array([1.0, -2.0, 0.5], np.float32)}).save(
        path, compact=True
    )
    with np.load(path) as data:
        arrays = dict(data)
    assert ClientState.load(path, "lin").residual["w"].tolist() == [1.0, -2.0, 0.5]
    arrays["residual-scale/w"] = np.array([np.nan], np.float32)
    np.savez(path, **arrays)
    assert ClientState.load(path, "lin") is None
    del arrays["residual-scale/w"]
    np.savez(path, **arrays)
    assert ClientState.load(path, "lin") is None
    assert spec.sign[0].shape == (3,)


def random_delta(spec, rng):
    signs = {t.name: rng.integers(0, 256, t.packed_bytes).astype(np.uint8) for t in spec.sign}
    scales = {t.name: float(rng.uniform(0.001, 0.01)) for t in spec.sign}
    real = {t.name: rng.standard_normal(t.shape).astype(np.float16) for t in spec.real}
    return codec.SignUpdate(signs, scales, real)


def test_store_rebuilds_every_version_bit_for_bit(tmp_path):
    spec = ModelSpec(
        (TensorSpec("w", (4, 4), "sign"), TensorSpec("bn", (3,), "real"))
    )  # no padding bits
    rng = np.random.default_rng(1)
    model = {"w": rng.standard_normal((4, 4)).astype(np.float32), "bn": np.zeros(3, np.float32)}
    store = ReplicaStore(tmp_path)
    store.publish("lin", 0, model, None)
    versions = [dict(model)]
    for v in range(1, SNAPSHOT_EVERY + 4):  # as SignStrategy.aggregate: global + dense
        update = random_delta(spec, rng)
        dense = update.dense(spec)
        new = {"w": versions[-1]["w"] + dense["w"], "bn": update.real["bn"].astype(np.float32)}
        versions.append(new)
        store.publish("lin", v, new, encode_update(update, spec))
    files = sorted(p.name for p in (tmp_path / "replicas" / "lin").iterdir())
    assert [f for f in files if f.startswith("model")] == ["model-0.npz", "model-16.npz"]
    assert len(files) == 2 + SNAPSHOT_EVERY + 3
    for v in (0, 5, 16, 19, 3, 19):  # from snapshots, from the cache, back again
        got = store.replica("lin", v, -1, spec)
        assert all(np.array_equal(got[k], versions[v][k]) for k in model), v
        ReplicaStore.clear_cache()
    with pytest.raises(ValueError, match="read-only"):
        got["w"] += 1  # the cache's arrays cannot be changed through a replica
    full = decode_full(encode_full(versions[4], spec), spec)  # sent the full model at version 4
    expected = full["w"]
    for v in (5, 6):
        expected = expected + random_delta_of(store, v, spec)
    assert np.array_equal(store.replica("lin", 6, 4, spec)["w"], expected)
    (tmp_path / "replicas" / "lin" / "delta-18.npz").unlink()
    ReplicaStore.clear_cache()
    assert store.replica("lin", 19, -1, spec) is None  # a missing delta: no replica, no guess
    assert store.replica("other", 2, -1, spec) is None


def random_delta_of(store, v, spec):
    with np.load(store.root / "lin" / f"delta-{v}.npz") as data:
        return codec.decode_update(dict(data), spec).dense(spec)["w"]


RUN = {
    "federation.num_clients": 3,
    "federation.clients_per_round": 2,
    "federation.compact_state": True,
    "train.max_batches": 1,
    "train.batch_size": 50,
    "train.num_threads": 1,
}


def test_compact_clients_train_from_the_exact_broadcast_model(tmp_path, monkeypatch):
    """Three rounds, two of three clients a round: every replica a client trains from is the
    server's broadcast model bit for bit, rebuilt from the published versions."""
    run_config = RUN | {"output_dir": str(tmp_path)}
    cfg = from_run_config(run_config)
    test = federated.load_split(cfg, "test")
    model = federated.new_model(cfg, test)
    spec = model_spec(model)
    zero = federated.version_zero(model, spec)
    strategy = build_strategy(cfg, spec, lineage="lin")
    strategy.offer_version_zero(codec.state_digest(zero, spec))
    store = ReplicaStore(tmp_path / "client-state")
    store.publish("lin", 0, zero, None)
    arrays = state_to_record(zero)
    trained_from = []  # the state each handler call trains from, in order
    original_load = federated.load_state

    def spy(model, state, spec):
        trained_from.append({k: np.array(v) for k, v in state.items()})
        original_load(model, state, spec)

    monkeypatch.setattr(federated, "load_state", spy)

    nodes = {1: 0, 2: 1, 3: 2}
    schedule = {1: [1, 2], 2: [2, 3], 3: [1, 3]}  # node 1 misses round 2: a chain in round 3
    for rnd, sampled in schedule.items():
        grid = type("Grid", (), {"get_node_ids": lambda self, ids=sampled: ids})()
        broadcast = record_to_state(arrays)
        replies = []
        for msg in strategy.configure_train(rnd, arrays, ConfigRecord(), grid):
            node = msg.metadata.dst_node_id
            node_config = {"partition-id": nodes[node], "num-partitions": 3}
            reply = app(msg, Context(1, node, node_config, RecordDict(), run_config))
            reply.metadata.__dict__["_src_node_id"] = node
            replies.append(reply)
            assert codec.ARRAYS in reply.content, (rnd, node)
            for k in broadcast:
                assert np.array_equal(trained_from[-1][k], broadcast[k]), (rnd, node, k)
        arrays, _ = strategy.aggregate_train(rnd, replies)
        store.publish("lin", strategy.version, record_to_state(arrays), strategy.last_delta_arrays)
    assert len(trained_from) == 6 and strategy.version == 3
    for p in nodes.values():
        path = state_path(tmp_path / "client-state", str(p))
        saved = ClientState.load(path, "lin")
        assert saved.replica == {} and saved.residual is not None and saved.origin == -1
        assert path.stat().st_size <= 2 * spec.sign_numel + 4096  # float16 residual, no replica


@pytest.mark.parametrize("compact", [False, True])
def test_bop_moments_survive_save_and_load(tmp_path, compact):
    moments = {"1.weight": np.linspace(-1, 1, 12, dtype=np.float16).reshape(3, 4)}
    replica = {"1.weight": np.full((3, 4), 0.5, np.float32)}
    ClientState("lin", 3, replica, None, moments=moments).save(tmp_path / "s.npz", compact=compact)
    back = ClientState.load(tmp_path / "s.npz", "lin")
    assert back is not None and back.moments.keys() == moments.keys()
    np.testing.assert_array_equal(back.moments["1.weight"], moments["1.weight"])
