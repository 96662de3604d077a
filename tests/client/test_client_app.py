"""The ClientApp handler, called directly with the server strategy's real messages (no Ray)."""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, RecordDict

from client.client_app import app
from client.state import ClientState, state_path
from core import codec, federated
from core.codec import model_spec
from core.config import from_run_config
from glue.records import RAW_STYPE, from_record, record_to_state, state_to_record, wire_bytes
from server.recorder import float32_wire_bytes
from server.strategies import build_strategy

RUN_CONFIG = {
    "federation.num_clients": 2,
    "federation.clients_per_round": 2,
    "train.max_batches": 1,
    "train.batch_size": 50,
    "train.num_threads": 1,
}
NODES = {101: 0, 102: 1}  # node id -> partition id
EXPECTED_METRICS = {
    codec.NUM_EXAMPLES,
    codec.LOSS,
    codec.ACCURACY,
    codec.BYTES_SENT,
    codec.BYTES_RECEIVED,
    codec.PEAK_MEMORY,
    codec.TRAIN_TIME,
    codec.MODEL_VERSION,
    codec.BATCH_SIZE,  # the batch it trained with (a memory-budget may lower it)
}


class FakeGrid:
    def get_node_ids(self):
        return list(NODES)


pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.fixture
def fed(tmp_path):
    """A real strategy and model, the run config, and a way to run one round on both nodes."""
    return _federation(tmp_path)


def _federation(tmp_path, extra: dict | None = None):
    run_config = RUN_CONFIG | {"output_dir": str(tmp_path)} | (extra or {})
    cfg = from_run_config(run_config)
    test = federated.load_split(cfg, "test")
    spec = model_spec(federated.new_model(cfg, test))
    model = federated.new_model(cfg, test)
    state = federated.version_zero(model, spec)  # what the ServerApp starts from
    strategy = build_strategy(cfg, spec, lineage="lin0")

    class Fed:
        def __init__(self):
            self.cfg, self.spec, self.strategy = cfg, spec, strategy
            self.arrays = state_to_record(state)
            self.contexts = {
                n: Context(1, n, {"partition-id": p, "num-partitions": 2}, RecordDict(), run_config)
                for n, p in NODES.items()
            }

        def send(self, server_round):
            return list(
                strategy.configure_train(server_round, self.arrays, ConfigRecord(), FakeGrid())
            )

        def reply(self, msg):
            return _as_reply(app(msg, self.contexts[msg.metadata.dst_node_id]), msg)

        def round(self, server_round):
            replies = [self.reply(m) for m in self.send(server_round)]
            new, _ = strategy.aggregate_train(server_round, replies)
            if new is not None:
                self.arrays = new
            return replies

        def path(self, node):
            return state_path(tmp_path / "client-state", str(NODES[node]))

    return Fed()


def _as_reply(reply, msg):
    # In a real run Flower stamps the reply's source; here the handler's reply_to did not.
    reply.metadata.__dict__["_src_node_id"] = msg.metadata.dst_node_id
    return reply


def test_reply_contains_only_signs_scales_float16_state_and_metrics(fed):
    msgs = fed.send(1)
    assert {m.content[codec.CONFIG][codec.PAYLOAD] for m in msgs} == {codec.FULL}
    reply = fed.reply(msgs[0])
    content = reply.content
    assert set(content.keys()) == {codec.ARRAYS, codec.METRICS}
    assert set(content[codec.METRICS].keys()) == EXPECTED_METRICS
    record = content[codec.ARRAYS]
    assert set(record.keys()) == {codec.SIGNS, codec.SCALES, codec.REAL}
    spec = fed.spec
    expected = {
        codec.SIGNS: ("uint8", spec.sign_bytes),
        codec.SCALES: ("float32", len(spec.sign)),
        codec.REAL: ("float16", spec.real_numel),
    }
    for key, arr in record.items():
        assert arr.stype == RAW_STYPE
        assert (arr.dtype, arr.shape[0]) == expected[key]
        assert len(arr.data) == arr.shape[0] * np.dtype(arr.dtype).itemsize
    # no float tensor of data size: the float payload is per-channel state and one scale a tensor
    ds = federated.load_split(fed.cfg, "train")
    pixels_per_client = ds.images[0].size * len(ds.labels) // 2
    float_elems = spec.real_numel + len(spec.sign)
    assert float_elems < 0.02 * spec.sign_numel and float_elems < pixels_per_client / 10
    assert spec.sign_bytes * 8 - spec.sign_numel < 8 * len(spec.sign)  # 1 bit per weight
    metrics = content[codec.METRICS]
    assert metrics[codec.NUM_EXAMPLES] > 0 and metrics[codec.MODEL_VERSION] == 0
    assert metrics[codec.BYTES_SENT] * 25 <= float32_wire_bytes(spec)  # the 1/25
    assert metrics[codec.BYTES_SENT] == wire_bytes(record)
    assert metrics[codec.PEAK_MEMORY] > 0


def test_error_feedback_residual_and_replica_are_persisted(fed):
    """What was sent plus the kept residual is exactly the local change (nothing is lost):
    with ``delta = scale * sign + residual`` and ``scale = mean |delta|`` (docs/method.md §10)."""
    replies = fed.round(1)
    saved = ClientState.load(fed.path(101), "lin0")
    assert saved is not None and saved.version == 0 and saved.residual is not None
    reply = next(r for r in replies if r.metadata.src_node_id == 101)
    update = codec.decode_update(from_record(reply.content[codec.ARRAYS], 1 << 30), fed.spec)
    sent = update.dense(fed.spec)
    for t in fed.spec.sign:
        delta = sent[t.name] + saved.residual[t.name]  # the client's local change
        assert saved.residual[t.name].shape == t.shape
        np.testing.assert_allclose(np.abs(delta).mean(), update.scales[t.name], rtol=1e-4)
        moved = np.abs(delta) > 1e-6
        assert np.array_equal(np.sign(delta[moved]), np.sign(sent[t.name][moved]))


def test_delta_downlink_keeps_replica_equal_to_global(fed):
    fed.round(1)
    msgs = fed.send(2)
    assert {m.content[codec.CONFIG][codec.PAYLOAD] for m in msgs} == {codec.DELTA}
    down = msgs[0].content[codec.ARRAYS]
    assert set(down.keys()) == {codec.SIGNS, codec.SCALES, codec.REAL}
    fed.reply(msgs[0])  # applies the delta, trains, saves
    replica = ClientState.load(fed.path(msgs[0].metadata.dst_node_id), "lin0").replica
    server = record_to_state(fed.arrays)
    for t in fed.spec.tensors:  # equal up to the float16 rounding of the round-1 full model
        np.testing.assert_allclose(replica[t.name], server[t.name], atol=2e-3, rtol=2e-3)


def test_client_without_replica_asks_for_the_full_model(fed):
    fed.round(1)
    fed.path(101).unlink()
    replies = fed.round(2)
    lost = next(r for r in replies if r.metadata.src_node_id == 101)
    assert codec.ARRAYS not in lost.content
    assert lost.content[codec.METRICS][codec.NEED_FULL] == 1
    kinds = {m.metadata.dst_node_id: m.content[codec.CONFIG][codec.PAYLOAD] for m in fed.send(3)}
    assert kinds[101] == codec.FULL


def test_fedavg_baseline_sends_float32_state(tmp_path, monkeypatch):
    run_config = RUN_CONFIG | {"output_dir": str(tmp_path), "strategy.name": "fedavg"}
    cfg = from_run_config(run_config)
    test = federated.load_split(cfg, "test")
    model = federated.new_model(cfg, test)
    spec = model_spec(model)
    strategy = build_strategy(cfg, spec, lineage="x")
    msgs = list(
        strategy.configure_train(
            1, state_to_record(federated.state_of(model, spec)), ConfigRecord(), FakeGrid()
        )
    )
    assert msgs[0].content[codec.CONFIG][codec.PAYLOAD] == codec.FLOAT32
    ctx = Context(1, 101, {"partition-id": 0, "num-partitions": 2}, RecordDict(), run_config)
    reply = app(msgs[0], ctx)
    got = from_record(reply.content[codec.ARRAYS], spec.float32_bytes)
    assert set(got) == {t.name for t in spec.tensors}
    assert all(v.dtype == np.float32 for v in got.values())
    assert not (tmp_path / "client-state").exists()  # nothing to keep for the baseline


def test_client_applies_train_num_threads(fed):
    torch.set_num_threads(2)
    try:
        fed.reply(fed.send(1)[0])
        assert torch.get_num_threads() == 1  # RUN_CONFIG's train.num_threads
    finally:
        torch.set_num_threads(1)


def test_lowcost_bop_replies_carry_the_binary_weights_and_the_global_model_learns(
    tmp_path, monkeypatch
):
    """lowcost-bop through the real handler and strategy (docs/method.md §2h): the replica stays
    real-valued, a client trains ``sign(replica)``, and since ``|replica| < 1`` the sign of its
    change ``local - replica`` is its trained binary weight itself: the reply's bits are the
    client's weights, exactly. The server's mean of ``scale * sign`` moves the global model
    towards the clients' weights and flips it where they agree; accuracy rises."""
    from core.models import float_state, weight_names

    trained = {}
    fit_local = federated.fit_local

    def recording_fit(model, data, cfg, server_round, moments=None):
        result = fit_local(model, data, cfg, server_round, moments)
        trained[int(data.train_idx[0])] = {
            k: v.float().numpy().ravel() for k, v in float_state(model).items()
        }
        return result

    monkeypatch.setattr(federated, "fit_local", recording_fit)
    fed = _federation(
        tmp_path,
        {
            "recipe.name": "lowcost-bop",
            "recipe.bop_gamma": 0.05,
            "recipe.bop_threshold": 0.1,
            "train.max_batches": 0,
        },
    )
    test = federated.load_split(fed.cfg, "test")
    model = federated.new_model(fed.cfg, test)
    names = weight_names(model)
    assert [t.name for t in fed.spec.sign] == names  # packed weights travel as lowcost's do
    start = record_to_state(fed.arrays)
    for k in names:  # version 0: half-committed signs
        assert set(np.unique(np.abs(start[k]))) == {0.5}
    federated.load_state(model, start, fed.spec)
    acc0 = federated.evaluate_global(fed.cfg, model, test).accuracy

    replies = fed.round(1)
    for reply in replies:
        update = codec.decode_update(from_record(reply.content[codec.ARRAYS], 1 << 30), fed.spec)
        sent = update.dense(fed.spec)
        matches = [
            all(np.array_equal(np.sign(sent[k]).ravel(), w[k]) for k in names)
            for w in trained.values()
        ]
        assert any(matches)  # the bits are one client's trained weights, exactly
    flipped = sum(
        int((np.sign(start[k]).ravel() != w[k]).sum()) for w in trained.values() for k in names
    )
    assert len(trained) == 2 and flipped > 0  # training flipped weights (Bop is exercised)
    after = record_to_state(fed.arrays)
    moved = [k for k in names if not np.array_equal(np.sign(after[k]), np.sign(start[k]))]
    assert moved  # the global binary model flipped where the clients agreed
    for server_round in range(2, 5):
        fed.round(server_round)
    federated.load_state(model, record_to_state(fed.arrays), fed.spec)
    acc = federated.evaluate_global(fed.cfg, model, test).accuracy
    assert acc > acc0 + 0.2, (acc0, acc)
