"""Exact catch-up downlink: seed-built version 0, chains of missed deltas, full model otherwise.

Real ClientApp and strategy, messages passed by hand (no Ray): three nodes, one sampled per
round, so a node comes back several versions behind.
"""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from client.client_app import app
from client.state import ClientState, state_path
from core import codec, federated
from core.codec import model_spec, state_digest
from core.config import from_run_config
from glue.records import record_to_state, state_to_record
from server.strategies import build_strategy
from server.strategies.downlink import DeltaHistory

pytestmark = pytest.mark.usefixtures("flower_task_identity")


class TestChoose:
    def history(self, *, seed=True, full=1000, limit=4):
        h = DeltaHistory(limit, full, "d" if seed else None)
        for v in range(1, 6):
            h.add(v, {"signs": np.zeros(100, np.uint8)})  # 100 B per delta
        return h

    def test_current_delta_chain_full(self):
        h = self.history()
        assert h.choose(5, 5) == (codec.CURRENT, 5)
        assert h.choose(4, 5) == (codec.DELTA, 4)
        assert h.choose(2, 5) == (codec.CHAIN, 2)  # 300 B < 1000 B
        assert h.choose(0, 5) == (codec.FULL, 4)  # delta 1 was dropped (limit 4)
        assert h.choose(-1, 5) == (codec.FULL, 4)  # the node said its replica is unusable

    def test_unknown_node_builds_version_zero_from_the_seed(self):
        h = DeltaHistory(8, 1000, "d")
        assert h.choose(None, 0) == (codec.CHAIN, 0)  # round 1: nothing travels
        h.add(1, {"signs": np.zeros(100, np.uint8)})
        assert h.choose(None, 1) == (codec.CHAIN, 0)
        assert DeltaHistory(8, 1000, None).choose(None, 1) == (codec.FULL, 0)

    def test_a_chain_dearer_than_the_full_model_is_not_sent(self):
        h = self.history(full=250, limit=8)
        assert h.choose(3, 5) == (codec.CHAIN, 3)  # 200 B < 250 B
        assert h.choose(2, 5) == (codec.FULL, 4)  # 300 B >= 250 B


def test_chain_codec_refuses_a_length_it_was_not_told():
    from core.codec import CodecError, ModelSpec, TensorSpec, decode_chain, encode_chain

    spec = ModelSpec((TensorSpec("w", (4,), "sign"),))
    one = {
        codec.SIGNS: np.array([48], np.uint8),
        codec.SCALES: np.array([0.5], np.float32),
        codec.REAL: np.zeros(0, np.float16),
    }
    arrays = encode_chain([one, one])
    assert len(decode_chain(arrays, spec, 2)) == 2
    with pytest.raises(CodecError, match="unexpected|missing"):
        decode_chain(arrays, spec, 3)
    with pytest.raises(CodecError, match="at most"):
        decode_chain({}, spec, codec.MAX_CHAIN + 1)


RUN_CONFIG = {
    "federation.num_clients": 3,
    "federation.clients_per_round": 1,
    "federation.min_clients": 1,
    "train.max_batches": 1,
    "train.batch_size": 50,
    "train.num_threads": 1,
}
NODES = {201: 0, 202: 1, 203: 2}


class Grid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return self.nodes


def test_stale_node_catches_up_exactly_with_a_chain(tmp_path):
    run_config = RUN_CONFIG | {"output_dir": str(tmp_path)}
    cfg = from_run_config(run_config)
    test = federated.load_split(cfg, "test")
    model = federated.new_model(cfg, test)
    spec = model_spec(model)
    v0 = federated.version_zero(model, spec)
    strategy = build_strategy(cfg, spec, lineage="lin")
    strategy.offer_version_zero(state_digest(v0, spec))
    arrays = state_to_record(v0)
    contexts = {
        n: Context(1, n, {"partition-id": p, "num-partitions": 3}, RecordDict(), run_config)
        for n, p in NODES.items()
    }

    def round_on(node, server_round):
        nonlocal arrays
        (msg,) = strategy.configure_train(server_round, arrays, ConfigRecord(), Grid([node]))
        reply = app(msg, contexts[node])
        reply.metadata.__dict__["_src_node_id"] = node
        before = record_to_state(arrays)
        new, _ = strategy.aggregate_train(server_round, [reply])
        arrays = new if new is not None else arrays
        return msg, before

    first, _ = round_on(201, 1)
    conf = first.content[codec.CONFIG]
    assert conf[codec.PAYLOAD] == codec.CHAIN and conf[codec.BASE_VERSION] == 0
    assert codec.ARRAYS not in first.content  # version 0 is built from the seed: 0 bytes
    for r in (2, 3, 4):  # node 202 trains; node 201 falls 3 versions behind
        round_on(202, r)
    back, broadcast_v4 = round_on(201, 5)
    conf = back.content[codec.CONFIG]
    assert conf[codec.PAYLOAD] == codec.CHAIN
    assert (conf[codec.BASE_VERSION], conf[codec.VERSION]) == (0, 4)  # it trained from v0
    assert len(back.content[codec.ARRAYS]) == 4 * 3  # four deltas: signs, scales, real each
    replica = ClientState.load(state_path(tmp_path / "client-state", "0"), "lin")
    assert replica.version == 4
    for t in spec.tensors:  # bit for bit what the server broadcast at version 4
        assert np.array_equal(replica.replica[t.name], broadcast_v4[t.name]), t.name
    new_node, broadcast_v5 = round_on(203, 6)  # never seen: seed + 5 deltas (< full model)
    conf = new_node.content[codec.CONFIG]
    assert (conf[codec.PAYLOAD], conf[codec.BASE_VERSION]) == (codec.CHAIN, 0)
    held = ClientState.load(state_path(tmp_path / "client-state", "2"), "lin")
    assert held.version == 5
    assert all(np.array_equal(held.replica[t.name], broadcast_v5[t.name]) for t in spec.tensors)


def test_a_device_whose_version_zero_differs_asks_for_the_full_model(tmp_path):
    run_config = RUN_CONFIG | {"output_dir": str(tmp_path)}
    cfg = from_run_config(run_config)
    test = federated.load_split(cfg, "test")
    model = federated.new_model(cfg, test)
    spec = model_spec(model)
    strategy = build_strategy(cfg, spec, lineage="lin")
    strategy.offer_version_zero("0" * 32)  # not what this device builds
    v0 = state_to_record(federated.version_zero(model, spec))
    (msg,) = strategy.configure_train(1, v0, ConfigRecord(), Grid([201]))
    ctx = Context(1, 201, {"partition-id": 0, "num-partitions": 3}, RecordDict(), run_config)
    reply = app(msg, ctx)
    assert reply.content[codec.METRICS][codec.NEED_FULL] == 1
