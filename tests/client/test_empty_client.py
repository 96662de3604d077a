"""A sampled client with no training example answers without an update and keeps no state."""

import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from client.client_app import app
from core import codec, federated
from core.codec import model_spec
from core.config import from_run_config
from glue.records import state_to_record
from server.strategies import build_strategy

pytestmark = pytest.mark.usefixtures("flower_task_identity")

POPULATION = 3000  # digits holds 1,438 training examples: partitions 1438.. are empty
NODES = {201: 5, 202: 2999}  # node id -> partition id


class FakeGrid:
    def get_node_ids(self):
        return list(NODES)


def test_empty_client_replies_without_update_and_server_counts_it(tmp_path):
    run_config = {
        "federation.num_clients": POPULATION,
        "federation.clients_per_round": 2,
        "federation.min_clients": 1,
        "train.max_batches": 1,
        "train.num_threads": 1,
        "output_dir": str(tmp_path),
    }
    cfg = from_run_config(run_config)
    test = federated.load_split(cfg, "test")
    model = federated.new_model(cfg, test)
    spec = model_spec(model)
    strategy = build_strategy(cfg, spec, lineage="lin")
    arrays = state_to_record(federated.state_of(model, spec))
    replies = []
    for msg in strategy.configure_train(1, arrays, ConfigRecord(), FakeGrid()):
        node = msg.metadata.dst_node_id
        config = {"partition-id": NODES[node], "num-partitions": POPULATION}
        reply = app(msg, Context(1, node, config, RecordDict(), run_config))
        reply.metadata.__dict__["_src_node_id"] = node  # Flower stamps this in a real run
        replies.append(reply)
    empty = next(r for r in replies if r.metadata.src_node_id == 202)
    assert codec.ARRAYS not in empty.content
    metrics = empty.content[codec.METRICS]
    assert metrics[codec.EMPTY] == 1 and metrics[codec.NUM_EXAMPLES] == 0
    assert metrics[codec.BYTES_SENT] == 0  # the footprint mod still reports the round
    state_dir = tmp_path / "client-state"
    assert sorted(p.name for p in state_dir.iterdir()) == ["client-5.npz"]  # none for 2999
    new, summary = strategy.aggregate_train(1, replies)
    assert new is not None and strategy.version == 1
    assert (summary["valid"], summary["empty"], summary["rejected"]) == (1, 1, 0)
